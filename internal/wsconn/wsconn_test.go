package wsconn

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
