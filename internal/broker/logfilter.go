package broker

import (
	"context"
	"log/slog"
)

// quietMochi lowers mochi's chatter to debug: its start-up info lines
// repeat what Warden logs itself; every refused connection makes its
// listener log a WARN with an empty message (Warden has already logged and
// audited the refusal with its reason); and packet errors repeat what
// Warden logs with the device ID.
type quietMochi struct{ slog.Handler }

func (h quietMochi) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelInfo || (r.Level > slog.LevelDebug && (r.Message == "" || r.Message == "error processing packet")) {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		nr := slog.NewRecord(r.Time, slog.LevelDebug, r.Message, r.PC)
		r.Attrs(func(a slog.Attr) bool { nr.AddAttrs(a); return true })
		r = nr
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietMochi) WithAttrs(as []slog.Attr) slog.Handler {
	return quietMochi{h.Handler.WithAttrs(as)}
}
func (h quietMochi) WithGroup(n string) slog.Handler { return quietMochi{h.Handler.WithGroup(n)} }
