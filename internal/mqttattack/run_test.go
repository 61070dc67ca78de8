package mqttattack

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// fakeBroker accepts on loopback and hands each connection to serve.
func fakeBroker(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); serve(c) })
		}
	})
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestEstablish(t *testing.T) {
	got := make(chan []byte, 1)
	addr := fakeBroker(t, func(c net.Conn) {
		want := Connect("pump7", 30)
		b := make([]byte, len(want))
		_, _ = io.ReadFull(c, b)
		got <- b
		_, _ = c.Write([]byte{0x20, 0x03, 0x00, 0x87, 0x00}) // CONNACK: not authorized
	})
	code, err := Establish(context.Background(), dial(t, addr), "pump7", 30)
	if err != nil || code != 0x87 {
		t.Fatalf("Establish = 0x%02x, %v; want 0x87", code, err)
	}
	if b := <-got; !bytes.Equal(b, Connect("pump7", 30)) {
		t.Errorf("broker got % x", b)
	}

	// A broker that never answers: the context ends the wait.
	silent := fakeBroker(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Establish(ctx, dial(t, silent), "pump7", 30); err == nil {
		t.Fatal("Establish returned without a CONNACK")
	}
}

// recordingBroker keeps what each connection sent; it closes a connection
// (after a DISCONNECT 0x81) as soon as it has read closeAfter bytes, or
// never (until the client does) if closeAfter is 0.
func recordingBroker(t *testing.T, closeAfter int) (string, chan []byte) {
	got := make(chan []byte, 16)
	addr := fakeBroker(t, func(c net.Conn) {
		var all bytes.Buffer
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			all.Write(buf[:n])
			if closeAfter > 0 && all.Len() >= closeAfter {
				_, _ = c.Write([]byte{0xE0, 0x01, 0x81})
				break
			}
			if err != nil {
				break
			}
		}
		got <- all.Bytes()
	})
	return addr, got
}

func TestRunIsReproducibleAndSeesTheClose(t *testing.T) {
	target := Target{ClientID: "pump7", Topic: "private/pump7/up/t", FilterPrefix: "private/pump7/down"}
	addr, got := recordingBroker(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var reports []Report
	var sent [][]byte
	for range 2 {
		// A broker that takes everything lets Run write its whole mix.
		quiet, all := recordingBroker(t, 0)
		c := dial(t, quiet)
		short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
		rep, err := Run(short, c, 42, Mix{Target: target, Stage: AfterConnect, MaxPackets: 12})
		cancelShort()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		reports = append(reports, rep)
		sent = append(sent, <-all)
	}
	if !bytes.Equal(sent[0], sent[1]) || len(reports[0].Sent) != len(reports[1].Sent) {
		t.Fatalf("seed 42 wrote different mixes: %v / %v", reports[0].Sent, reports[1].Sent)
	}
	if reports[0].Bytes != len(sent[0]) {
		t.Errorf("Report.Bytes = %d, the broker got %d", reports[0].Bytes, len(sent[0]))
	}
	if reports[0].Closed {
		t.Errorf("Run says a broker that never closed closed: %v", reports[0])
	}
	if a, ok := Find(reports[0].Last()); !ok || a.Want == Survive {
		t.Errorf("a mix that was never cut short ends with %q, want an attack the broker must refuse", reports[0].Last())
	}

	// A broker that closes at once, after a DISCONNECT.
	rep, err := Run(ctx, dial(t, addr), 42, Mix{Target: target, Stage: AfterConnect})
	if err != nil {
		t.Fatal(err)
	}
	<-got
	if !rep.Closed || rep.DisconnectReason != 0x81 || len(rep.Sent) == 0 {
		t.Errorf("Run against a broker that refuses: %v", rep)
	}
}

func TestThrow(t *testing.T) {
	a, _ := Find("publish-qos-3")
	target := Target{ClientID: "pump7", Topic: "private/pump7/up/t"}
	addr, got := recordingBroker(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := Throw(ctx, dial(t, addr), 1, a, target)
	if err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, PublishQoS3(target.Topic)) {
		t.Errorf("broker got % x", b)
	}
	if !rep.Closed || rep.DisconnectReason != 0x81 || rep.Last() != "publish-qos-3" {
		t.Errorf("Throw: %v", rep)
	}

	quiet, all := recordingBroker(t, 0)
	c := dial(t, quiet)
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	rep, err = Throw(short, c, 1, a, target)
	if err != nil || rep.Closed {
		t.Errorf("Throw at a broker that keeps the connection: %v, %v", rep, err)
	}
	c.Close()
	<-all
}

func TestRunBeforeConnectSendsOnlyAttacks(t *testing.T) {
	addr, got := recordingBroker(t, 0)
	c := dial(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	rep, err := Run(ctx, c, 3, Mix{Target: Target{ClientID: "x", Topic: "t"}, Stage: BeforeConnect})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-got
	for _, name := range rep.Sent {
		a, ok := Find(name)
		if !ok || a.Stage != BeforeConnect {
			t.Errorf("before CONNECT Run sent %q", name)
		}
	}
}

func TestFloodCountsRefusalsAndAnswers(t *testing.T) {
	var n sync.Mutex
	i := 0
	addr := fakeBroker(t, func(c net.Conn) {
		n.Lock()
		i++
		answer := i%2 == 0
		n.Unlock()
		if answer {
			_, _ = c.Write([]byte{0x16})
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	r := Flood(ctx, FloodOptions{Addr: addr, Workers: 4, Hello: []byte("hello")})
	if r.Attempts < 10 || r.Refused == 0 || r.Answered == 0 {
		t.Fatalf("flood: %+v", r)
	}
	if sum := r.DialErrors + r.Refused + r.Answered + r.Unanswered; sum != r.Attempts {
		t.Errorf("outcomes add up to %d of %d attempts", sum, r.Attempts)
	}
	if r.Rate() <= 0 {
		t.Errorf("rate %v", r.Rate())
	}
}

func TestStall(t *testing.T) {
	addr := fakeBroker(t, func(c net.Conn) {
		b := make([]byte, 5)
		_, _ = io.ReadFull(c, b)
		time.Sleep(100 * time.Millisecond) // then give up on it
	})
	s, err := Stall(dial(t, addr), []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the server's close was not seen")
	}
	if !s.ClosedByServer() || s.ClosedAfter() < 100*time.Millisecond {
		t.Errorf("closed by server %v after %v", s.ClosedByServer(), s.ClosedAfter())
	}

	// Closing it ourselves is not the server's doing.
	hold := fakeBroker(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	s, err = Stall(dial(t, hold), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.ClosedAfter() != 0 {
		t.Error("an open connection reports a close")
	}
	_ = s.Close()
	if s.ClosedByServer() {
		t.Error("our own Close counted as the server's")
	}
}
