package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/warden-iot/warden/internal/fileutil"
)

// WardenOptions configures StartWarden.
type WardenOptions struct {
	// Binary is the warden executable; default os.Executable() (the
	// benchmark runs inside the warden binary).
	Binary string
	// DataDir is Warden's data directory, created (and initialised by the
	// first `warden serve`) when missing. Default: a new temporary
	// directory, which the caller removes (Proc.Dir).
	DataDir string
	// API also starts the HTTPS API listener on a loopback port; off by
	// default, as no scenario uses it.
	API bool
	// PlainMQTT starts the plain MQTT listener for envelope devices
	// (Proc.PlainAddr).
	PlainMQTT bool
	// ClassicKeyExchange turns tls.hybrid_pq off: X25519 and P-256 only,
	// as Mosquitto with OpenSSL 3.0 negotiates. Default: Warden's default,
	// the hybrid X25519MLKEM768 first.
	ClassicKeyExchange bool
	// LogLevel is Warden's log level; default info, what production runs.
	LogLevel string
	// Config sets further configuration keys, by their dotted names
	// ("limits.client_send_queue": 256, "monitor.enabled": false); a
	// time.Duration is written in Warden's duration syntax. It overrides
	// the benchmark's own settings. Warden validates the result at start,
	// so a wrong key or value fails StartWarden with Warden's message.
	Config map[string]any
	// Env adds environment variables (GOMAXPROCS=2, GODEBUG=...). WARDEN_*
	// variables of the benchmark's own environment are not passed on, so
	// that the configuration file says everything.
	Env []string
	// StartTimeout bounds waiting for /healthz; default
	// DefaultStartTimeout. StopTimeout is how long Stop waits after
	// SIGTERM; default DefaultStopTimeout.
	StartTimeout time.Duration
	StopTimeout  time.Duration
}

// setting is one configuration key the benchmark writes, with the reason
// it differs from Warden's default (written into the file as a comment).
type setting struct {
	key   string // dotted
	value any
	why   string
}

// benchmarkSettings are the keys the benchmark changes from Warden's
// defaults (docs/configuration.md), besides listener addresses. Each has
// its reason: a benchmark must not silently measure another product. What
// stays at its default is deliberate too: the monitor runs, publishes are
// still checked against a rate limit, sessions persist, the per-client
// send queue and inflight window are the production ones (raise them
// through WardenOptions.Config to see what they cost).
func benchmarkSettings() []setting {
	return []setting{
		{"limits.connection_rate", 1000000,
			"default 500/s per listener: the storm measures handshakes per second, which this limiter would cap; it is still consulted on every accept"},
		{"limits.connection_burst", 1000000,
			"default 1000: 15,000 devices reconnecting at once would be refused beyond it"},
		{"limits.connection_rate_per_source", 1000000,
			"default 125/s per source address: the benchmark's devices come from eight loopback addresses, each far faster than that in a storm; it is still consulted on every accept"},
		{"limits.connect_timeout", "1m",
			"default 10s: in a storm thousands of handshakes queue on 2 cores, and a timeout would turn queueing into failed attempts and retries (Mosquitto has no such deadline)"},
		{"limits.flap_max_connects", 1000,
			"default 15 per minute: repeated storms reconnect every device deliberately; the check itself still runs on every connect"},
		{"limits.publish_rate", 1000000,
			"default 100/s per device: a throughput run may drive one device harder than a real one; the token bucket is still checked on every publish"},
		{"limits.publish_burst", 1000000,
			"default 200: as publish_rate"},
		{"monitor.cloned_identity.enabled", false,
			"default on: the simulator spreads connections over 127.0.0.x source addresses, which this detector reads as one key used from several hosts, raising an alert per device per storm"},
		{"monitor.connect_flapping.threshold", 1000000,
			"default 10 within 10m: repeated storms would raise an alert per device (a database write each) that no production fleet would see"},
	}
}

// wardenListeners are the addresses one start attempt binds.
type wardenListeners struct {
	mqtts, http, api, plain string
}

// wardenConfig renders warden.yaml: the data directory, loopback
// listeners, the benchmark's settings and the caller's overrides, with a
// comment on every key saying why it is set.
func wardenConfig(o WardenOptions, dataDir string, l wardenListeners) ([]byte, error) {
	set := []setting{
		{"data", dataDir, "this benchmark's data directory"},
		{"mqtts.addr", l.mqtts, "loopback, a free port"},
		{"http.addr", l.http, "loopback, a free port: /healthz and /metrics"},
	}
	if l.api != "" {
		set = append(set, setting{"api.addr", l.api, "loopback, a free port"})
	} else {
		set = append(set, setting{"api.addr", "", "off: no scenario uses the HTTPS API"})
	}
	if l.plain != "" {
		set = append(set, setting{"mqtt.addr", l.plain, "loopback, a free port: plain MQTT for envelope devices"})
	}
	if o.LogLevel != "" {
		set = append(set, setting{"log.level", o.LogLevel, "as asked"})
	}
	if o.ClassicKeyExchange {
		set = append(set, setting{"tls.hybrid_pq", false, "X25519 and P-256 only, as asked (Warden's default offers X25519MLKEM768 first)"})
	}
	set = append(set, benchmarkSettings()...)
	keys := make([]string, 0, len(o.Config))
	for k := range o.Config {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		switch k {
		case "data", "mqtts.addr", "http.addr", "api.addr", "mqtt.addr":
			return nil, fmt.Errorf("bench: configuration key %q is the benchmark's to set (use WardenOptions.DataDir, API or PlainMQTT)", k)
		}
		v := o.Config[k]
		if d, ok := v.(time.Duration); ok {
			v = formatDuration(d)
		}
		set = append(set, setting{k, v, "set by the benchmark's caller"})
	}

	root := &yaml.Node{Kind: yaml.MappingNode}
	for _, s := range set {
		if err := setNode(root, strings.Split(s.key, "."), s.value, s.why); err != nil {
			return nil, fmt.Errorf("bench: configuration key %q: %w", s.key, err)
		}
	}
	doc := &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{root},
		HeadComment: "Written by Warden's benchmark (internal/bench) for one run.\n" +
			"Every key is either a loopback listener or differs from Warden's default\n" +
			"for the reason given beside it; everything else is the default."}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("bench: render warden.yaml: %w", err)
	}
	return out, nil
}

// setNode sets path to value under a mapping node, creating mappings on
// the way and replacing an earlier value (and its comment).
func setNode(m *yaml.Node, path []string, value any, why string) error {
	for _, p := range path {
		if p == "" {
			return errors.New("empty path element")
		}
	}
	for i := 0; ; i++ {
		key := path[i]
		var child *yaml.Node
		for j := 0; j+1 < len(m.Content); j += 2 {
			if m.Content[j].Value == key {
				child = m.Content[j+1]
				break
			}
		}
		last := i == len(path)-1
		if last {
			v := &yaml.Node{}
			if err := v.Encode(value); err != nil {
				return err
			}
			v.LineComment = why
			if child != nil {
				*child = *v
			} else {
				m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, v)
			}
			return nil
		}
		if child == nil {
			child = &yaml.Node{Kind: yaml.MappingNode}
			m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, child)
		} else if child.Kind != yaml.MappingNode {
			return fmt.Errorf("%q is a value, not a section", strings.Join(path[:i+1], "."))
		}
		m = child
	}
}

// formatDuration writes d in Warden's duration syntax ("90s", "500ms").
func formatDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "0s"
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	case d%time.Millisecond == 0:
		return fmt.Sprintf("%dms", d/time.Millisecond)
	}
	return d.String()
}

// maxPortAttempts bounds restarts after another process took a port
// between freeAddr and the server's bind.
const maxPortAttempts = 3

// StartWarden runs `warden serve` as a child process with a generated
// configuration (DataDir/warden.yaml: every listener on a free loopback
// port, the settings of benchmarkSettings and WardenOptions.Config) and
// waits until /healthz answers. Its output goes to DataDir/warden.log.
//
// The process lives until Proc.Stop or until ctx ends.
func StartWarden(ctx context.Context, o WardenOptions) (*Proc, error) {
	bin, err := selfBinary(o.Binary)
	if err != nil {
		return nil, err
	}
	dataDir := o.DataDir
	if dataDir == "" {
		if dataDir, err = os.MkdirTemp("", "warden-bench-"); err != nil {
			return nil, fmt.Errorf("bench: create a data directory: %w", err)
		}
	}
	if dataDir, err = filepath.Abs(dataDir); err != nil {
		return nil, fmt.Errorf("bench: data directory: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("bench: create the data directory: %w", err)
	}
	for attempt := 1; ; attempt++ {
		p, err := startWardenOnce(ctx, bin, dataDir, o)
		if err == nil {
			p.Version = wardenVersion(ctx, bin)
			return p, nil
		}
		if attempt == maxPortAttempts || p == nil || !logContains(p.LogPath, "address already in use") {
			return nil, err
		}
		// Another process took a port between freeAddr and the bind: pick
		// new ones.
	}
}

// startWardenOnce makes one attempt; on failure it returns the stopped
// Proc (for its log) with the error.
func startWardenOnce(ctx context.Context, bin, dataDir string, o WardenOptions) (*Proc, error) {
	var l wardenListeners
	var err error
	addrs := []*string{&l.mqtts, &l.http}
	if o.API {
		addrs = append(addrs, &l.api)
	}
	if o.PlainMQTT {
		addrs = append(addrs, &l.plain)
	}
	for _, a := range addrs {
		if *a, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	conf, err := wardenConfig(o, dataDir, l)
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(dataDir, "warden.yaml")
	if err := fileutil.WriteFileAtomic(confPath, conf, 0o600); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	p, err := startProc(ctx, procSpec{
		name: "warden", path: bin, args: []string{"serve", "--config", confPath},
		dir: dataDir, env: childEnv(o.Env), logPath: filepath.Join(dataDir, "warden.log"), stopTimeout: o.StopTimeout,
	})
	if err != nil {
		return nil, err
	}
	p.ConfigPath = confPath
	p.Addr, p.HTTPAddr, p.APIAddr, p.PlainAddr = l.mqtts, l.http, l.api, l.plain
	client := &http.Client{Timeout: 2 * time.Second}
	healthz := "http://" + l.http + "/healthz"
	err = p.waitReady(ctx, o.StartTimeout, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, healthz, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: HTTP %s", healthz, resp.Status)
		}
		return nil
	})
	if err != nil {
		return p, p.failStart(err)
	}
	p.ServerCA = filepath.Join(dataDir, "pki", "root.crt")
	if p.ServerCAPEM, err = os.ReadFile(p.ServerCA); err != nil {
		return p, p.failStart(fmt.Errorf("bench: Warden is up but its root certificate is unreadable: %w", err))
	}
	return p, nil
}

// wardenVersion runs `warden --version` ("warden version dev").
func wardenVersion(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "warden version "))
}
