// Package audit records security-relevant events (authentication failures,
// revocations, relayed commands) as JSON lines in an append-only file and
// mirrors each one to the structured log.
//
// The record format is deliberately flat so a later hash chain (issue 6) can
// wrap each line without changing what callers pass in.
package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Event is one audited fact. Never put a secret in any field.
type Event struct {
	Time     time.Time         `json:"time"`
	Action   string            `json:"action"`             // e.g. "mqtt.connect", "device.revoke"
	Outcome  string            `json:"outcome"`            // "allowed", "denied", "done", "failed"
	Actor    string            `json:"actor,omitempty"`    // who did it: "device:<id>", "service:<name>", "operator"
	Subject  string            `json:"subject,omitempty"`  // what it was done to
	Reason   string            `json:"reason,omitempty"`   // machine-readable cause
	Remote   string            `json:"remote,omitempty"`   // peer address
	Listener string            `json:"listener,omitempty"` // MQTT listener name
	Details  map[string]string `json:"details,omitempty"`  // anything else worth keeping
}

// Recorder is what components depend on; *Log implements it.
type Recorder interface {
	Record(ctx context.Context, e Event)
}

// Log appends events to a file. It is safe for concurrent use.
type Log struct {
	mu     sync.Mutex
	f      *os.File
	logger *slog.Logger
	now    func() time.Time
	failed bool
}

// Open opens (or creates, mode 0600) the audit file at path.
func Open(path string, logger *slog.Logger) (*Log, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("audit: create directory for %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	return &Log{f: f, logger: logger.With("audit", true), now: time.Now}, nil
}

// Record appends e. A write failure is logged loudly once per failure streak;
// it never blocks or fails the operation being audited.
func (l *Log) Record(ctx context.Context, e Event) {
	if e.Time.IsZero() {
		e.Time = l.now().UTC()
	}
	line, err := json.Marshal(e)
	if err != nil { // cannot happen for this struct; keep the event in the log anyway
		line = []byte(fmt.Sprintf(`{"action":%q,"error":"marshal failed"}`, e.Action))
	}
	line = append(line, '\n')

	level := slog.LevelInfo
	if e.Outcome == "denied" || e.Outcome == "failed" {
		level = slog.LevelWarn
	}
	attrs := []any{"action", e.Action, "outcome", e.Outcome}
	for _, kv := range [][2]string{{"actor", e.Actor}, {"subject", e.Subject}, {"reason", e.Reason}, {"remote", e.Remote}, {"listener", e.Listener}} {
		if kv[1] != "" {
			attrs = append(attrs, kv[0], kv[1])
		}
	}
	for k, v := range e.Details {
		attrs = append(attrs, k, v)
	}
	l.logger.Log(ctx, level, "audit", attrs...)

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	if _, err := l.f.Write(line); err != nil {
		if !l.failed {
			l.logger.Error("audit: cannot append to the audit file; events are only in this log until it recovers", "error", err)
		}
		l.failed = true
		return
	}
	l.failed = false
}

// Close flushes and closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Sync()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	return err
}

// Discard is a Recorder that only logs; for tools that have no data directory.
type Discard struct{ Logger *slog.Logger }

// Record logs e at debug level.
func (d Discard) Record(ctx context.Context, e Event) {
	if d.Logger != nil {
		d.Logger.DebugContext(ctx, "audit", "action", e.Action, "outcome", e.Outcome, "reason", e.Reason)
	}
}
