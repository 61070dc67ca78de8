package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/warden-iot/warden/commandproto"
	"github.com/warden-iot/warden/envelope"
)

// commandSide plays Warden's command relay for one device over TLS: it
// publishes commands on private/<id>/down/cmd and reads results from
// private/<id>/up/cmd-result as an inline subscriber.
type commandSide struct {
	t       *testing.T
	e       *env
	results chan []byte
}

func newCommandSide(t *testing.T, e *env) *commandSide {
	t.Helper()
	s := &commandSide{t: t, e: e, results: make(chan []byte, 256)}
	err := e.broker.srv.Subscribe(commandproto.ResultTopic(e.id), 11, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		s.results <- append([]byte{}, pk.Payload...)
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// command builds a command with a fresh ID, due in d.
func command(t *testing.T, name, body string, d time.Duration) Command {
	t.Helper()
	id, err := commandproto.NewID()
	if err != nil {
		t.Fatal(err)
	}
	c := Command{ID: id, Name: name, Deadline: time.Now().Add(d).UTC()}
	if body != "" {
		c.Body = json.RawMessage(body)
	}
	return c
}

func (s *commandSide) sendRaw(payload []byte) {
	s.t.Helper()
	if err := s.e.broker.srv.Publish(commandproto.CommandTopic(s.e.id), payload, false, 1); err != nil {
		s.t.Fatal(err)
	}
}

func (s *commandSide) send(c Command) {
	s.t.Helper()
	b, err := c.Marshal()
	if err != nil {
		s.t.Fatal(err)
	}
	s.sendRaw(b)
}

func (s *commandSide) next() commandproto.Result {
	s.t.Helper()
	select {
	case b := <-s.results:
		r, err := commandproto.ParseResult(b)
		if err != nil {
			s.t.Fatalf("the device sent a result that does not parse: %v (%s)", err, b)
		}
		return r
	case <-time.After(5 * time.Second):
		s.t.Fatal("no result within 5s")
		return commandproto.Result{}
	}
}

func (s *commandSide) none(within time.Duration) {
	s.t.Helper()
	select {
	case b := <-s.results:
		s.t.Fatalf("unexpected result %s", b)
	case <-time.After(within):
	}
}

// awaitStats polls CommandStats until ok accepts them: results are counted
// as answered once the broker has acknowledged them, which may be after
// the test saw them.
func awaitStats(t *testing.T, c *Client, ok func(CommandStats) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := c.CommandStats()
		if ok(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("command stats %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func handleCommands(t *testing.T, c *Client, h CommandHandler) {
	t.Helper()
	if err := c.HandleCommands(testContext(t), h); err != nil {
		t.Fatalf("HandleCommands: %v", err)
	}
}

func TestHandleCommandsResults(t *testing.T) {
	e := newEnv(t)
	side := newCommandSide(t, e)
	c := connect(t, e.config(t))
	deadlines := make(chan [2]time.Time, 1)
	handleCommands(t, c, func(ctx context.Context, cmd Command) (json.RawMessage, error) {
		switch cmd.Name {
		case "echo":
			d, _ := ctx.Deadline()
			deadlines <- [2]time.Time{d, cmd.Deadline}
			return cmd.Body, nil
		case "nothing":
			return nil, nil
		case "fail":
			return nil, fmt.Errorf("sensor %q failed:\n\tbus error\x00", "t1")
		case "fail-long":
			return nil, errors.New(strings.Repeat("é", 300))
		case "fail-empty":
			return nil, errors.New("\n")
		case "bad-json":
			return json.RawMessage(`{"a":`), nil
		case "too-big":
			return json.RawMessage(`"` + strings.Repeat("a", commandproto.MaxBody) + `"`), nil
		default:
			return nil, fmt.Errorf("command %q: %w", cmd.Name, ErrUnknownCommand)
		}
	})

	for _, tc := range []struct {
		name, body string
		want       commandproto.Result
	}{
		{"echo", `{"color":"red","levels":[1,2]}`, commandproto.Result{Status: "ok", Body: json.RawMessage(`{"color":"red","levels":[1,2]}`)}},
		{"nothing", "", commandproto.Result{Status: "ok"}},
		{"fail", "", commandproto.Result{Status: "error", Error: `sensor "t1" failed:  bus error`}},
		{"fail-long", "", commandproto.Result{Status: "error", Error: strings.Repeat("é", 256)}},
		{"fail-empty", "", commandproto.Result{Status: "error", Error: "the command failed"}},
		{"bad-json", "", commandproto.Result{Status: "error", Error: "the device's answer is not valid JSON"}},
		{"too-big", "", commandproto.Result{Status: "error", Error: "the device's answer of 16386 bytes exceeds the 16384-byte limit"}},
		{"self-destruct", "", commandproto.Result{Status: "rejected", Error: "unknown command"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			side.t = t
			cmd := command(t, tc.name, tc.body, 5*time.Second)
			side.send(cmd)
			got := side.next()
			tc.want.ID = cmd.ID
			if got.ID != tc.want.ID || got.Status != tc.want.Status || got.Error != tc.want.Error || string(got.Body) != string(tc.want.Body) {
				t.Errorf("result %+v (body %s), want %+v (body %s)", got, got.Body, tc.want, tc.want.Body)
			}
			if tc.name == "echo" {
				d := <-deadlines
				if !d[0].Equal(d[1]) {
					t.Errorf("the handler's context ends at %v, want the command's deadline %v", d[0], d[1])
				}
			}
		})
	}
	side.t = t
	awaitStats(t, c, func(st CommandStats) bool {
		return st == CommandStats{Received: 8, Answered: 8, Rejected: 1}
	})
}

func TestHandleCommandsDeadlinePassed(t *testing.T) {
	e := newEnv(t)
	side := newCommandSide(t, e)
	c := connect(t, e.config(t))
	var calls atomic.Int32
	handleCommands(t, c, func(context.Context, Command) (json.RawMessage, error) {
		calls.Add(1)
		return nil, nil
	})
	cmd := command(t, "reboot", "", -time.Second)
	side.send(cmd)
	if r := side.next(); r.ID != cmd.ID || r.Status != commandproto.StatusRejected || r.Error != commandproto.RejectDeadline {
		t.Errorf("result %+v, want rejected: deadline passed", r)
	}
	// A repeat is answered the same, still without acting.
	side.send(cmd)
	if r := side.next(); r.ID != cmd.ID || r.Error != commandproto.RejectDeadline {
		t.Errorf("repeat answered %+v", r)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the handler ran %d times for a command past its deadline", n)
	}
	awaitStats(t, c, func(st CommandStats) bool {
		return st == CommandStats{Received: 2, Repeated: 1, Rejected: 1, Answered: 2}
	})
}

func TestHandleCommandsRepeatedID(t *testing.T) {
	e := newEnv(t)
	side := newCommandSide(t, e)
	c := connect(t, e.config(t))
	var calls atomic.Int32
	release := make(chan struct{})
	handleCommands(t, c, func(_ context.Context, cmd Command) (json.RawMessage, error) {
		n := calls.Add(1)
		if cmd.Name == "slow" {
			<-release
		}
		return json.RawMessage(fmt.Sprintf(`{"run":%d}`, n)), nil
	})

	// Answered, then repeated: the same result, the handler not called.
	a := command(t, "count", "", 5*time.Second)
	side.send(a)
	first := side.next()
	side.send(a)
	again := side.next()
	if again.ID != a.ID || again.Status != first.Status || string(again.Body) != string(first.Body) || string(first.Body) != `{"run":1}` {
		t.Errorf("first answer %+v (%s), repeat %+v (%s)", first, first.Body, again, again.Body)
	}

	// Repeated while it runs: one result answers both.
	b := command(t, "slow", "", 5*time.Second)
	side.send(b)
	side.send(b)
	side.none(100 * time.Millisecond)
	close(release)
	if r := side.next(); r.ID != b.ID || string(r.Body) != `{"run":2}` {
		t.Errorf("slow command answered %+v (%s)", r, r.Body)
	}
	side.none(200 * time.Millisecond)
	if n := calls.Load(); n != 2 {
		t.Errorf("the handler ran %d times for 2 commands", n)
	}
	awaitStats(t, c, func(st CommandStats) bool {
		return st == CommandStats{Received: 4, Repeated: 2, Answered: 3}
	})
}

func TestHandleCommandsRemembersTheLast64(t *testing.T) {
	e := newEnv(t)
	side := newCommandSide(t, e)
	c := connect(t, e.config(t))
	var calls atomic.Int32
	handleCommands(t, c, func(context.Context, Command) (json.RawMessage, error) {
		calls.Add(1)
		return nil, nil
	})
	var cmds []Command
	for range commandMemory + 1 {
		cmd := command(t, "x", "", 5*time.Second)
		cmds = append(cmds, cmd)
		side.send(cmd)
		side.next()
	}
	// The newest is remembered; the oldest was forgotten and runs again.
	side.send(cmds[len(cmds)-1])
	side.next()
	side.send(cmds[0])
	side.next()
	if n := calls.Load(); n != commandMemory+2 {
		t.Errorf("the handler ran %d times, want %d", n, commandMemory+2)
	}
}

func TestHandleCommandsMalformed(t *testing.T) {
	e := newEnv(t)
	side := newCommandSide(t, e)
	c := connect(t, e.config(t))
	var calls atomic.Int32
	handleCommands(t, c, func(context.Context, Command) (json.RawMessage, error) {
		calls.Add(1)
		return nil, nil
	})
	deadline := time.Now().Add(5 * time.Second).UTC().Format(time.RFC3339)
	for _, p := range []string{
		`reboot`,
		`{"id":"AAAAAAAAAAAAAAAAAAAAAA","name":"Reboot","deadline":"` + deadline + `"}`,
		`{"id":"AAAAAAAAAAAAAAAAAAAAAA","name":"reboot","name":"wipe","deadline":"` + deadline + `"}`,
		`{"id":"AAAAAAAAAAAAAAAAAAAAAA","name":"reboot","deadline":"` + deadline + `","force":true}`,
		`{"id":"short","name":"reboot","deadline":"` + deadline + `"}`,
	} {
		side.sendRaw([]byte(p))
	}
	// Messages arrive in order: once this one is answered, the malformed
	// ones have been dropped.
	ok := command(t, "reboot", "", 5*time.Second)
	side.send(ok)
	if r := side.next(); r.ID != ok.ID || r.Status != commandproto.StatusOK {
		t.Errorf("result %+v", r)
	}
	side.none(50 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Errorf("the handler ran %d times", n)
	}
	awaitStats(t, c, func(st CommandStats) bool {
		return st == CommandStats{Received: 1, Answered: 1, Dropped: 5}
	})
}

func TestHandleCommandsBusy(t *testing.T) {
	e := newEnv(t)
	side := newCommandSide(t, e)
	c := connect(t, e.config(t))
	started := make(chan string, 16)
	release := make(chan struct{})
	handleCommands(t, c, func(ctx context.Context, cmd Command) (json.RawMessage, error) {
		started <- cmd.ID
		<-release
		return nil, nil
	})

	running := command(t, "slow", "", 10*time.Second)
	side.send(running)
	select {
	case id := <-started:
		if id != running.ID {
			t.Fatalf("started %s", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not start")
	}
	// CommandQueue wait (one of them only briefly: its deadline passes in
	// the queue), and the next is turned away at once.
	var queued []Command
	for i := range CommandQueue {
		d := 10 * time.Second
		if i == 0 {
			d = 300 * time.Millisecond
		}
		cmd := command(t, "slow", "", d)
		queued = append(queued, cmd)
		side.send(cmd)
	}
	extra := command(t, "slow", "", 10*time.Second)
	side.send(extra)
	if r := side.next(); r.ID != extra.ID || r.Status != commandproto.StatusRejected || r.Error != commandproto.RejectBusy {
		t.Fatalf("result %+v, want the extra command rejected as busy while the handler runs", r)
	}
	// A receive goroutine blocked by the handler would not have answered
	// that; nor would it deliver other messages.
	other := make(chan Message, 1)
	if err := c.SubscribeDown(testContext(t), "led", 1, collect(other)); err != nil {
		t.Fatal(err)
	}
	if err := e.broker.srv.Publish("private/"+e.id+"/down/led", []byte("on"), false, 1); err != nil {
		t.Fatal(err)
	}
	receive(t, other)

	time.Sleep(400 * time.Millisecond) // queued[0]'s deadline passes
	close(release)
	got := make(map[string]commandproto.Result)
	for range 1 + CommandQueue {
		r := side.next()
		got[r.ID] = r
	}
	if r := got[running.ID]; r.Status != commandproto.StatusOK {
		t.Errorf("running command: %+v", r)
	}
	if r := got[queued[0].ID]; r.Status != commandproto.StatusRejected || r.Error != commandproto.RejectDeadline {
		t.Errorf("command whose deadline passed in the queue: %+v", r)
	}
	for _, cmd := range queued[1:] {
		if r := got[cmd.ID]; r.Status != commandproto.StatusOK {
			t.Errorf("queued command %s: %+v", cmd.ID, r)
		}
	}
	awaitStats(t, c, func(st CommandStats) bool {
		return st == CommandStats{Received: 2 + CommandQueue, Rejected: 2, Answered: 2 + CommandQueue}
	})
}

func TestHandleCommandsEnvelope(t *testing.T) {
	e, si := newEnvelopeEnv(t, envelope.CCM8)
	c := connect(t, e.plainConfig(t, si.envelope(t)))
	if res := si.nextConnect(); res.reason != "" {
		t.Fatalf("CONNECT refused: %+v", res)
	}
	handleCommands(t, c, func(_ context.Context, cmd Command) (json.RawMessage, error) {
		return cmd.Body, nil
	})

	// A plaintext command is dropped by the envelope layer, before
	// HandleCommands sees it.
	plain := command(t, "echo", `"plain"`, 5*time.Second)
	b, err := plain.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	si.publish(commandproto.ChannelCommand, b)

	cmd := command(t, "echo", `{"sealed":true}`, 5*time.Second)
	if b, err = cmd.Marshal(); err != nil {
		t.Fatal(err)
	}
	si.publish(commandproto.ChannelCommand, si.sealDown(commandproto.ChannelCommand, 0, b))
	u := si.nextUplink()
	if !u.sealed || u.channel != commandproto.ChannelResult {
		t.Fatalf("the result reached Warden as %+v, want sealed on %s", u, commandproto.ChannelResult)
	}
	r, err := commandproto.ParseResult(u.payload)
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != cmd.ID || r.Status != commandproto.StatusOK || string(r.Body) != `{"sealed":true}` {
		t.Errorf("result %+v (%s)", r, r.Body)
	}
	var dropped uint64
	st := c.EnvelopeStats()
	for _, n := range st.Dropped {
		dropped += n
	}
	if st.Opened != 1 || dropped != 1 || st.Sealed != 1 {
		t.Errorf("envelope stats %+v, want the sealed command opened, the plaintext one dropped and the result sealed", st)
	}
	awaitStats(t, c, func(st CommandStats) bool {
		return st == CommandStats{Received: 1, Answered: 1}
	})
}

func TestHandleCommandsOwnsTheChannel(t *testing.T) {
	e := newEnv(t)
	ctx := testContext(t)
	c := connect(t, e.config(t))
	nop := func(context.Context, Command) (json.RawMessage, error) { return nil, nil }

	if err := c.HandleCommands(ctx, nil); err == nil {
		t.Error("HandleCommands accepted a nil handler")
	}
	if st := c.CommandStats(); st != (CommandStats{}) {
		t.Errorf("stats before HandleCommands: %+v", st)
	}
	handleCommands(t, c, nop)
	if err := c.HandleCommands(ctx, nop); err == nil || !strings.Contains(err.Error(), "already handles commands") {
		t.Errorf("second HandleCommands: %v", err)
	}
	if err := c.SubscribeDown(ctx, commandproto.ChannelCommand, 1, func(Message) {}); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("SubscribeDown(cmd) after HandleCommands: %v", err)
	}
	if err := c.Subscribe(ctx, commandproto.CommandTopic(e.id), 1, func(Message) {}); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("Subscribe(cmd topic) after HandleCommands: %v", err)
	}
	if err := c.SubscribeDown(ctx, "+", 1, func(Message) {}); err != nil {
		t.Errorf("SubscribeDown(+) beside HandleCommands: %v", err)
	}

	// A client whose application took the channel first.
	e2 := newEnv(t)
	c2 := connect(t, e2.config(t))
	if err := c2.SubscribeDown(ctx, commandproto.ChannelCommand, 1, func(Message) {}); err != nil {
		t.Fatal(err)
	}
	if err := c2.HandleCommands(ctx, nop); err == nil || !strings.Contains(err.Error(), "already subscribes") {
		t.Errorf("HandleCommands after SubscribeDown(cmd): %v", err)
	}
}

func TestHandleCommandsClose(t *testing.T) {
	e := newEnv(t)
	side := newCommandSide(t, e)
	cfg := e.config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	ended := make(chan error, 1)
	if err := c.HandleCommands(ctx, func(ctx context.Context, _ Command) (json.RawMessage, error) {
		close(started)
		<-ctx.Done()
		ended <- ctx.Err()
		return nil, ctx.Err()
	}); err != nil {
		t.Fatal(err)
	}
	side.send(command(t, "wait", "", time.Minute))
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not start")
	}
	start := time.Now()
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %v with a handler running", d)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the handler's context ended with %v, want context.Canceled", err)
		}
	default:
		t.Error("Close returned before the handler did")
	}
	if err := c.HandleCommands(ctx, func(context.Context, Command) (json.RawMessage, error) { return nil, nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("HandleCommands after Close: %v", err)
	}
}
