package wsconn

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestStreamAcrossMessages checks that reads see one byte stream however
// the peer split it into messages, and that text messages are refused.
func TestStreamAcrossMessages(t *testing.T) {
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for _, part := range []string{"he", "llo", "", " world"} {
			ws.WriteMessage(websocket.BinaryMessage, []byte(part))
		}
		ws.WriteMessage(websocket.TextMessage, []byte("nope"))
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := New(ws)
	defer c.Close()
	got := make([]byte, len("hello world"))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte("hello world")) {
		t.Fatalf("read %q, %v", got, err)
	}
	if _, err := c.Read(make([]byte, 4)); !errors.Is(err, ErrTextMessage) {
		t.Fatalf("text message: %v", err)
	}
}

// TestDeadlinesWhileWriting runs deadline refreshes against concurrent
// writes, as the MQTT server does; run with -race.
func TestDeadlinesWhileWriting(t *testing.T) {
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for {
			if _, _, err := ws.NextReader(); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := New(ws)
	defer c.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			c.Write([]byte("x"))
		}
	}()
	for i := 0; i < 200; i++ {
		c.SetDeadline(time.Now().Add(time.Minute))
	}
	<-done
}
