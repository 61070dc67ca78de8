package wardentest

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// HTTPGet fetches url with a 5s timeout and returns the body, failing the
// test on any error or a status other than 200.
func HTTPGet(t testing.TB, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// Eventually polls cond every 20ms until it holds, failing the test with
// "timed out ... waiting for <what>" after within. The server does much
// asynchronously (audit lines, metrics, session expiry), so a test waits
// for the effect rather than sleeping.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", within, what)
}

// JSONField walks a dotted path ("credentials.0.serial": object keys and
// array indexes) through the JSON document doc, as the CLI's --json output
// prints it, and returns the string it ends at. Anything else fails the
// test.
func JSONField(t testing.TB, doc, path string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatalf("parse JSON: %v\n%s", err, doc)
	}
	for _, part := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[part]
		case []any:
			i, err := strconv.Atoi(part)
			if err != nil || i < 0 || i >= len(x) {
				t.Fatalf("path %s: bad index %s", path, part)
			}
			v = x[i]
		default:
			t.Fatalf("path %s: cannot descend into %T", path, v)
		}
	}
	s, ok := v.(string)
	if !ok {
		t.Fatalf("path %s: not a string: %v", path, v)
	}
	return s
}
