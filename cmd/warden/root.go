package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/apiclient"
	"github.com/warden-iot/warden/internal/app"
	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// cli carries what every command needs; no package-level state.
type cli struct {
	in       io.Reader
	out, err io.Writer
}

func newRootCmd(in io.Reader, out, errOut io.Writer) *cobra.Command {
	c := &cli{in: in, out: out, err: errOut}
	root := &cobra.Command{
		Use:   "warden",
		Short: "Warden: a self-hosted security backbone for IoT fleets",
		Long: `Warden runs its own certificate authority, a device registry and an MQTT
broker that binds every connection to exactly one device certificate.

Quick start:
  warden serve                                   # initialise ./warden-data on first run, then serve
  warden device add dev1 --out ./devices         # issue a key and certificate for device "dev1"
  mosquitto_pub --cafile ./devices/ca.crt --cert ./devices/dev1.crt --key ./devices/dev1.key \
      -h localhost -p 8883 -i dev1 -t private/dev1/up/hello -m hi

Every command reads warden.yaml (or --config FILE), WARDEN_* environment
variables and its flags, in that order of precedence; see docs/configuration.md.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errOut)
	config.AddGlobalFlags(root.PersistentFlags())

	root.AddCommand(
		c.initCmd(),
		c.serveCmd(),
		c.caCmd(),
		c.deviceCmd(),
		c.serviceCmd(),
		c.fwCmd(),
		c.rolloutCmd(),
		c.claimCertCmd(),
		c.tokenCmd(),
		c.auditCmd(),
		c.alertsCmd(),
		c.simCmd(),
		c.benchCmd(),
	)
	return root
}

// load reads the configuration for cmd (defaults < file < env < flags).
func (c *cli) load(cmd *cobra.Command) (*config.Config, *slog.Logger, error) {
	cfg, err := config.Load(config.LoadOptions{Flags: cmd.Flags(), Environ: os.Environ()})
	if err != nil {
		return nil, nil, err
	}
	return cfg, newLogger(cfg, c.err), nil
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// service returns the running server's API, reached through its admin
// socket, when `warden serve` runs on this data directory; otherwise the
// registry opened locally. The returned func releases it.
func (c *cli) service(ctx context.Context, cfg *config.Config, log *slog.Logger) (admin.Service, func(), error) {
	client, err := c.server(ctx, cfg, log)
	if err != nil {
		return nil, nil, err
	}
	if client != nil {
		return client, func() {}, nil
	}
	env, err := app.Open(ctx, cfg, quiet(log))
	if err != nil {
		return nil, nil, err
	}
	rec, err := audit.Open(env.Paths.AuditLog, quiet(log))
	if err != nil {
		env.Close()
		return nil, nil, err
	}
	fw, err := env.OpenOTA(rec, nil, nil)
	if err != nil {
		rec.Close()
		env.Close()
		return nil, nil, err
	}
	rot, err := env.OpenRotation(rec, nil, nil)
	if err != nil {
		rec.Close()
		env.Close()
		return nil, nil, err
	}
	return admin.Local{Registry: env.Registry, OTA: fw, Rotation: rot}, func() { rec.Close(); env.Close() }, nil
}

// server returns a client of the running server's API on its admin
// socket, or nil when no server runs on this data directory.
func (c *cli) server(ctx context.Context, cfg *config.Config, log *slog.Logger) (*apiclient.Client, error) {
	client, err := apiclient.DialSocket(ctx, cfg.Paths().AdminSocket)
	if err != nil {
		return nil, err
	}
	if client != nil {
		log.Debug("using the running server's API on its admin socket", "socket", cfg.Paths().AdminSocket)
	}
	return client, nil
}

// openService loads the configuration for cmd and returns the service to
// act on (see service).
func (c *cli) openService(cmd *cobra.Command) (admin.Service, func(), error) {
	cfg, log, err := c.load(cmd)
	if err != nil {
		return nil, nil, err
	}
	return c.service(cmd.Context(), cfg, log)
}

// quiet drops info-level chatter from components when a CLI command runs
// them in-process; warnings and errors still show.
func quiet(log *slog.Logger) *slog.Logger {
	if log.Enabled(context.Background(), slog.LevelDebug) {
		return log
	}
	return slog.New(levelFloor{log.Handler(), slog.LevelWarn})
}

type levelFloor struct {
	slog.Handler
	min slog.Level
}

func (h levelFloor) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

// WithAttrs and WithGroup keep the floor on derived loggers
// (log.With("component", ...)); the embedded handler's would drop it.
func (h levelFloor) WithAttrs(attrs []slog.Attr) slog.Handler {
	return levelFloor{h.Handler.WithAttrs(attrs), h.min}
}

func (h levelFloor) WithGroup(name string) slog.Handler {
	return levelFloor{h.Handler.WithGroup(name), h.min}
}

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints aligned columns.
func (c *cli) table(header []string, rows [][]string) {
	widths := make([]int, len(header))
	for i, h := range header {
		widths[i] = len(h)
	}
	for _, r := range rows {
		for i, v := range r {
			if len(v) > widths[i] {
				widths[i] = len(v)
			}
		}
	}
	line := func(cols []string) {
		var b strings.Builder
		for i, v := range cols {
			if i > 0 {
				b.WriteString("  ")
			}
			if i == len(cols)-1 {
				b.WriteString(v)
			} else {
				fmt.Fprintf(&b, "%-*s", widths[i], v)
			}
		}
		fmt.Fprintln(c.out, b.String())
	}
	line(header)
	for _, r := range rows {
		line(r)
	}
}
