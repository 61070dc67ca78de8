package broker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestDecodeLengthRefusesMoreThanFourBytes guards third_party/mochi's
// eighth patch (PATCHES.md): upstream decoded 80 80 80 80 80 01 as a
// remaining length of 0 and read continuation bytes without end.
func TestDecodeLengthRefusesMoreThanFourBytes(t *testing.T) {
	cases := []struct {
		in      []byte
		want    int
		wantErr error
	}{
		{[]byte{0x00}, 0, nil},
		{[]byte{0x7F}, 127, nil},
		{[]byte{0x80, 0x01}, 128, nil},
		{[]byte{0xFF, 0xFF, 0xFF, 0x7F}, 268_435_455, nil},
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x00}, 0, packets.ErrMalformedVariableByteInteger},
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 0, packets.ErrMalformedVariableByteInteger},
		{bytes.Repeat([]byte{0x80}, 1000), 0, packets.ErrMalformedVariableByteInteger},
		{[]byte{0x80, 0x80}, 0, io.EOF}, // cut short
	}
	for _, c := range cases {
		r := bytes.NewReader(c.in)
		n, _, err := packets.DecodeLength(r)
		if !errors.Is(err, c.wantErr) || (c.wantErr == nil && n != c.want) {
			t.Errorf("DecodeLength(% x) = %d, %v; want %d, %v", c.in, n, err, c.want, c.wantErr)
		}
		if c.wantErr != nil && r.Len() < len(c.in)-5 {
			t.Errorf("DecodeLength(% x) read %d bytes before refusing; a length has at most four", c.in, len(c.in)-r.Len())
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestDisconnectReason(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{io.EOF, ""},
		{net.ErrClosed, ""},
		{packets.ErrPacketTooLarge, "packet-too-large"},
		{packets.ErrMalformedInvalidUTF8, "malformed-packet"},
		{packets.ErrMalformedVariableByteInteger, "malformed-packet"},
		{packets.ErrProtocolViolationQosOutOfRange, "protocol-error"},
		{packets.ErrProtocolViolationNoPacketID, "protocol-error"},
		{fmt.Errorf("property type 127 not valid for packet type 3: %w", packets.ErrProtocolViolationUnsupportedProperty), "protocol-error"},
		{packets.ErrTopicAliasInvalid, "protocol-error"},
		{errors.New("invalid packet type; 0"), "malformed-packet"},
		{&net.OpError{Op: "read", Err: timeoutErr{}}, "keepalive-timeout"},
		// The broker's own doing, counted where it is done.
		{packets.ErrSessionTakenOver, ""},
		{packets.ErrNotAuthorized, ""},
		{packets.ErrServerShuttingDown, ""},
	}
	for _, c := range cases {
		if got := disconnectReason(c.err); got != c.want {
			t.Errorf("disconnectReason(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestConnectFailureReason(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("read connection: %w", os.ErrDeadlineExceeded), "connect-timeout"},
		{fmt.Errorf("read connection: %w", &net.OpError{Op: "read", Err: timeoutErr{}}), "connect-timeout"},
		{fmt.Errorf("read connection: %w", io.EOF), "connect-closed"},
		{fmt.Errorf("read connection: %w", &net.OpError{Op: "read", Err: syscall.ECONNRESET}), "connect-closed"},
		{fmt.Errorf("read connection: %w", packets.ErrProtocolViolationRequireFirstConnect), "malformed-connect"},
		{fmt.Errorf("read connection: %w", packets.ErrMalformedFlags), "malformed-connect"},
		{fmt.Errorf("read connection: %w", packets.ErrPacketTooLarge), "packet-too-large"},
		{packets.ErrProtocolViolationReservedBit, "malformed-connect"}, // validateConnect's answer
		{packets.ErrUnsupportedProtocolVersion, "malformed-connect"},
	}
	for _, c := range cases {
		if got := connectFailureReason(c.err); got != c.want {
			t.Errorf("connectFailureReason(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestTooDeep(t *testing.T) {
	cases := []struct {
		levels int
		want   bool
	}{{1, false}, {5, false}, {maxTopicLevels, false}, {maxTopicLevels + 1, true}, {10_000, true}}
	for _, c := range cases {
		topic := "a" + strings.Repeat("/a", c.levels-1)
		if got := tooDeep(topic); got != c.want {
			t.Errorf("tooDeep(%d levels) = %v, want %v", c.levels, got, c.want)
		}
	}
}

func TestFlappingAuditsOncePerBanAndMinute(t *testing.T) {
	b := &Broker{opts: Options{Limits: Limits{FlapMaxConnects: 2, FlapWindow: time.Minute, FlapBan: time.Hour}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	h := newSecurityHook(b)
	var got []string
	for range 6 {
		banned, audit := h.flapping("d1")
		got = append(got, fmt.Sprintf("%v/%v", banned, audit))
	}
	// Two connects pass, the third starts the ban (audited), the rest are
	// refused quietly.
	want := []string{"false/false", "false/false", "true/true", "true/false", "true/false", "true/false"}
	if !slices.Equal(got, want) {
		t.Fatalf("flapping: %v, want %v", got, want)
	}
	// A minute later, one refusal is audited again.
	h.mu.Lock()
	h.flaps["d1"].audited = time.Now().Add(-flapAuditEvery)
	h.mu.Unlock()
	if banned, audit := h.flapping("d1"); !banned || !audit {
		t.Errorf("a minute into the ban: banned %v audit %v, want both", banned, audit)
	}
	if _, audit := h.flapping("d1"); audit {
		t.Error("two audited refusals within a minute")
	}
	if banned, _ := h.flapping("d2"); banned {
		t.Error("another client ID is banned too")
	}
}
