package session

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/wardentest"
)

// MQTT 5 reason codes the broker answers refusals with: "not authorized"
// for topic rights and identity, "unspecified error" where the reason must
// stay secret (a refused envelope).
const (
	codeNotAuthorized    = 0x87
	codeUnspecifiedError = 0x80
)

// within is how long a test waits for an asynchronous effect (an audit
// line, a metric, a delivery) on a loaded CI machine.
const within = 10 * time.Second

// counter remembers a metric's value so that a test can assert by how much
// an attack moved it.
type counter struct {
	s      *wardentest.Server
	name   string
	labels []string
	start  float64
}

func newCounter(t testing.TB, s *wardentest.Server, name string, labels ...string) *counter {
	t.Helper()
	return &counter{s: s, name: name, labels: labels, start: s.Metric(t, name, labels...)}
}

func (c *counter) String() string {
	return fmt.Sprintf("%s{%s}", c.name, strings.Join(c.labels, ","))
}

// rose waits until the metric has grown by exactly n.
func (c *counter) rose(t testing.TB, n float64) {
	t.Helper()
	var now float64
	deadline := time.Now().Add(within)
	for {
		now = c.s.Metric(t, c.name, c.labels...)
		if now >= c.start+n || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if now != c.start+n {
		t.Errorf("%s went from %v to %v, want +%v", c, c.start, now, n)
	}
	c.start = now
}

// still checks that the metric has not moved.
func (c *counter) still(t testing.TB) {
	t.Helper()
	if now := c.s.Metric(t, c.name, c.labels...); now != c.start {
		t.Errorf("%s went from %v to %v, want no change", c, c.start, now)
		c.start = now
	}
}

// audited waits for an audit line that contains every fragment.
func audited(t testing.TB, s *wardentest.Server, fragments ...string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !s.AuditContains(fragments...) {
		if time.Now().After(deadline) {
			t.Errorf("no audit line with %q", fragments)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// notAudited checks that no audit line contains every fragment.
func notAudited(t testing.TB, s *wardentest.Server, fragments ...string) {
	t.Helper()
	if lines := s.AuditLines(fragments...); len(lines) > 0 {
		t.Errorf("unexpected audit lines with %q:\n%s", fragments, strings.Join(lines, "\n"))
	}
}

// connected fails the test if the client's connection has ended.
func connected(t testing.TB, who string, down <-chan struct{}) {
	t.Helper()
	select {
	case <-down:
		t.Fatalf("%s was disconnected", who)
	default:
	}
}
