package mqttattack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// Establish sends CONNECT (MQTT 5, Clean Start, the client ID and
// keep-alive) on conn and reads the broker's answer. It returns the
// CONNACK's reason code (0 = accepted); an error when no CONNACK came
// before ctx ended or the connection failed. It leaves conn without a
// deadline.
func Establish(ctx context.Context, conn net.Conn, clientID string, keepAlive uint16) (byte, error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer func() {
		stop()
		_ = conn.SetDeadline(time.Time{})
	}()
	if _, err := conn.Write(Connect(clientID, keepAlive)); err != nil {
		return 0, fmt.Errorf("mqttattack: send CONNECT as %q: %w", clientID, err)
	}
	// The broker under test is the only peer: paho's reader is trusted
	// with its answer.
	cp, err := packets.ReadPacket(conn)
	if err != nil {
		return 0, fmt.Errorf("mqttattack: read the CONNACK for %q: %w", clientID, err)
	}
	ack, ok := cp.Content.(*packets.Connack)
	if !ok {
		return 0, fmt.Errorf("mqttattack: broker answered CONNECT with %s, not CONNACK", cp.PacketType())
	}
	return ack.ReasonCode, nil
}

// Mix is what Run throws at a connection.
type Mix struct {
	// Target describes the connection (see Target).
	Target Target
	// Stage is where the connection is: Run draws only attacks of this
	// stage, and before CONNECT sends no valid packets between them.
	Stage Stage
	// Attacks to draw from; nil means every Refuse and Survive attack of
	// the Catalog for Stage. (Starve attacks are left out by default: each
	// waits for a read deadline, which tests the deadline, not the parser.)
	Attacks []Attack
	// MaxPackets is how many packets Run writes before it ends the mix
	// with an attack the broker must refuse; 0 means 32.
	MaxPackets int
}

// Report is what happened to one Run.
type Report struct {
	// Seed reproduces the run: the same seed and Mix write the same bytes.
	Seed uint64
	// Sent names what was written, in order: attack names, and "valid"
	// for the well-formed packets in between.
	Sent []string
	// Bytes is how many bytes were written.
	Bytes int
	// Closed is true when the broker closed (or reset) the connection.
	Closed bool
	// ClosedAfter is the time from the last write to the close.
	ClosedAfter time.Duration
	// DisconnectReason is the reason code of the DISCONNECT the broker
	// sent before closing, or -1 when it sent none.
	DisconnectReason int
}

// Last is the name of the last thing written (the attack the broker most
// likely closed the connection for), or "" when nothing was.
func (r Report) Last() string {
	if len(r.Sent) == 0 {
		return ""
	}
	return r.Sent[len(r.Sent)-1]
}

func (r Report) String() string {
	return fmt.Sprintf("seed %d: sent %v (%d bytes); closed=%v after %v, DISCONNECT reason %d",
		r.Seed, r.Sent, r.Bytes, r.Closed, r.ClosedAfter.Round(time.Millisecond), r.DisconnectReason)
}

// Run throws a reproducible mix of attacks at conn: valid packets (PINGREQ,
// a QoS 0 PUBLISH to the target topic) interleaved with attacks drawn from
// m, all chosen and parametrized by a PCG generator seeded with seed. It
// writes until the broker closes the connection, or it has written an
// attack the broker must refuse or starve on, or m.MaxPackets packets
// (then it ends with an attack the broker must refuse); then it waits for
// the broker to close the connection until ctx ends. It never closes conn
// itself. The error is for failures of the tool, not of the broker: a
// broker that keeps the connection open shows as Report.Closed false.
func Run(ctx context.Context, conn net.Conn, seed uint64, m Mix) (Report, error) {
	rep := Report{Seed: seed, DisconnectReason: -1}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	attacks := m.Attacks
	if attacks == nil {
		for _, a := range Catalog() {
			if a.Stage == m.Stage && a.Want != Starve {
				attacks = append(attacks, a)
			}
		}
	}
	if len(attacks) == 0 {
		return rep, errors.New("mqttattack: Run: no attacks to draw from")
	}
	var closers, survivors []Attack
	for _, a := range attacks {
		switch a.Want {
		case Refuse:
			closers = append(closers, a)
		case Survive:
			survivors = append(survivors, a)
		}
	}
	maxPackets := m.MaxPackets
	if maxPackets <= 0 {
		maxPackets = 32
	}

	w := watch(conn)
	defer w.stop()
	var lastWrite time.Time
	for i := 0; ; i++ {
		var name string
		var b []byte
		var want Want
		pick := func(as []Attack) {
			a := as[rng.IntN(len(as))]
			name, b, want = a.Name, a.Gen(m.Target, rng), a.Want
		}
		// Mostly input the broker should survive, so that a mix gets long
		// before an attack it must refuse ends it.
		switch r := rng.IntN(8); {
		case i == maxPackets-1 && len(closers) > 0:
			pick(closers)
		case m.Stage == AfterConnect && r < 3:
			name, want = "valid", Survive
			if rng.IntN(2) == 0 {
				b = Pingreq()
			} else {
				b = Publish(m.Target.Topic, 0, 0, []byte("valid"))
			}
		case len(survivors) > 0 && r < 7:
			pick(survivors)
		default:
			pick(attacks)
		}
		if w.isClosed() {
			break
		}
		rep.Sent = append(rep.Sent, name)
		_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Write(b)
		rep.Bytes += n
		lastWrite = time.Now()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return rep, fmt.Errorf("mqttattack: write %s: the broker stopped reading without closing: %w", name, err)
			}
			break // the broker closed the connection under us
		}
		if want != Survive || i >= maxPackets-1 {
			break
		}
	}
	_ = conn.SetWriteDeadline(time.Time{})

	select {
	case <-w.done:
	case <-ctx.Done():
	}
	w.stop()
	rep.Closed, rep.DisconnectReason = w.result()
	if rep.Closed {
		rep.ClosedAfter = max(w.closedAt.Sub(lastWrite), 0)
	}
	return rep, nil
}

// Throw writes one attack on conn (generated with a PCG seeded with seed)
// and waits for the broker to close the connection, until ctx ends. For
// an attack the broker should survive, give ctx a short deadline: the
// connection staying open is then the expected outcome, and Throw returns
// with Report.Closed false. It never closes conn itself.
func Throw(ctx context.Context, conn net.Conn, seed uint64, a Attack, t Target) (Report, error) {
	rep := Report{Seed: seed, DisconnectReason: -1, Sent: []string{a.Name}}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := a.Gen(t, rng)
	w := watch(conn)
	defer w.stop()
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	n, err := conn.Write(b)
	_ = conn.SetWriteDeadline(time.Time{})
	rep.Bytes = n
	wrote := time.Now()
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return rep, fmt.Errorf("mqttattack: write %s: the broker stopped reading without closing: %w", a.Name, err)
	}
	select {
	case <-w.done:
	case <-ctx.Done():
	}
	w.stop()
	rep.Closed, rep.DisconnectReason = w.result()
	if rep.Closed {
		rep.ClosedAfter = max(w.closedAt.Sub(wrote), 0)
	}
	return rep, nil
}

// watcher reads what the broker sends on a connection until the broker
// closes it, keeping the first few KiB to find a DISCONNECT in.
type watcher struct {
	conn     net.Conn
	done     chan struct{} // closed when the reading ends
	stopOnce sync.Once

	mu       sync.Mutex
	got      bytes.Buffer
	closed   bool // the broker closed the connection (not our deadline)
	closedAt time.Time
}

// keepBytes bounds what a watcher keeps of the broker's output.
const keepBytes = 16 << 10

func watch(conn net.Conn) *watcher {
	w := &watcher{conn: conn, done: make(chan struct{})}
	go w.read()
	return w
}

func (w *watcher) read() {
	defer close(w.done)
	buf := make([]byte, 4096)
	for {
		n, err := w.conn.Read(buf)
		w.mu.Lock()
		if room := keepBytes - w.got.Len(); room > 0 {
			w.got.Write(buf[:min(n, room)])
		}
		if err != nil {
			// Our own deadline (stop) is not the broker's doing; anything
			// else (EOF, a reset, a TLS alert) is the connection ending.
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				w.closed, w.closedAt = true, time.Now()
			}
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
	}
}

func (w *watcher) isClosed() bool {
	select {
	case <-w.done:
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.closed
	default:
		return false
	}
}

// stop ends the reading (if the broker has not) and waits for it.
func (w *watcher) stop() {
	w.stopOnce.Do(func() { _ = w.conn.SetReadDeadline(time.Now()) })
	<-w.done
	_ = w.conn.SetReadDeadline(time.Time{})
}

// result reports whether the broker closed the connection and the reason
// code of a DISCONNECT it sent first (-1 if none).
func (w *watcher) result() (bool, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	reason := -1
	r := bytes.NewReader(w.got.Bytes())
	for {
		cp, err := packets.ReadPacket(r)
		if err != nil {
			break
		}
		if d, ok := cp.Content.(*packets.Disconnect); ok {
			reason = int(d.ReasonCode)
		}
	}
	return w.closed, reason
}
