package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/warden-iot/warden/internal/broker"
	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/internal/sim"
)

// The bare TLS server is the yardstick for Warden's handshake rate: the
// same mutual-TLS handshakes (TLS 1.3, a P-256 server key, client
// certificates verified against the same CAs, Warden's own tls.Config from
// broker.ServerTLSConfig with its key-exchange preferences) and nothing
// else: no MQTT, no registry, no revocation check. It runs in its own
// process, like the brokers, so that its CPU time is its own: the warden
// binary exposes ServeBaseline as the hidden command
//
//	warden bench tls-server --listen ADDR --ca FILE --cert FILE --key FILE [--hybrid-pq=false] [--addr-file FILE]
//
// (AddBaselineFlags defines the flags), and StartBaseline runs it.

// Baseline defaults.
const (
	// DefaultBaselineConcurrency is how many handshakes HandshakeBaseline
	// keeps in flight.
	DefaultBaselineConcurrency = 32
	// DefaultBaselineDuration is how long HandshakeBaseline runs.
	DefaultBaselineDuration = 10 * time.Second
	// baselineHandshakeTimeout matches the benchmark's Warden connect
	// timeout (benchmarkSettings).
	baselineHandshakeTimeout = time.Minute
)

// BaselineServerOptions configures ServeBaseline; each field is a flag of
// the tls-server command (AddBaselineFlags).
type BaselineServerOptions struct {
	// Listen is the address to listen on (--listen); default
	// 127.0.0.1:0, a free port.
	Listen string
	// CAFile holds the CAs client certificates must chain to (--ca): for
	// Warden's devices, WardenCABundle.
	CAFile string
	// CertFile and KeyFile are the server's certificate chain and key
	// (--cert, --key), e.g. from WriteServerCert.
	CertFile, KeyFile string
	// HybridPQ offers X25519MLKEM768 first, as Warden does by default
	// (--hybrid-pq; true unless --hybrid-pq=false).
	HybridPQ bool
	// AddrFile, if set, receives the bound address once the server
	// listens (--addr-file), so that a parent can use port 0.
	AddrFile string
	// Logger gets the start and the totals at the end; nil discards.
	Logger *slog.Logger
}

// AddBaselineFlags defines the tls-server command's flags on fs, bound to
// o; HybridPQ defaults to true.
func AddBaselineFlags(fs *pflag.FlagSet, o *BaselineServerOptions) {
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:0", "address to listen on")
	fs.StringVar(&o.CAFile, "ca", "", "PEM file of the CAs client certificates must chain to")
	fs.StringVar(&o.CertFile, "cert", "", "PEM file of the server certificate chain")
	fs.StringVar(&o.KeyFile, "key", "", "PEM file of the server key")
	fs.BoolVar(&o.HybridPQ, "hybrid-pq", true, "offer the hybrid post-quantum key exchange X25519MLKEM768 first, as Warden does by default")
	fs.StringVar(&o.AddrFile, "addr-file", "", "write the bound address to this file once listening")
}

// baselineArgs are the flags for o, as AddBaselineFlags reads them.
func baselineArgs(o BaselineServerOptions) []string {
	args := []string{"--listen", o.Listen, "--ca", o.CAFile, "--cert", o.CertFile, "--key", o.KeyFile,
		fmt.Sprintf("--hybrid-pq=%t", o.HybridPQ)}
	if o.AddrFile != "" {
		args = append(args, "--addr-file", o.AddrFile)
	}
	return args
}

// ServeBaseline runs the bare mutual-TLS server until ctx ends. Each
// connection gets a full handshake that must verify the client's
// certificate; the server then writes one byte (so that the client knows
// its certificate was accepted, which in TLS 1.3 it cannot tell from its
// own handshake) and closes.
func ServeBaseline(ctx context.Context, o BaselineServerOptions) error {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.CAFile == "" || o.CertFile == "" || o.KeyFile == "" {
		return errors.New("bench: tls-server: --ca, --cert and --key are required")
	}
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return fmt.Errorf("bench: tls-server: load the server certificate: %w", err)
	}
	caPEM, err := os.ReadFile(o.CAFile)
	if err != nil {
		return fmt.Errorf("bench: tls-server: read the client CAs: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("bench: tls-server: %s holds no PEM certificate", o.CAFile)
	}
	cfg, err := broker.ServerTLSConfig(cert, pool, broker.ProfileStrict, o.HybridPQ)
	if err != nil {
		return fmt.Errorf("bench: tls-server: %w", err)
	}
	listen := o.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("bench: tls-server: %w", err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	if o.AddrFile != "" {
		if err := fileutil.WriteFileAtomic(o.AddrFile, []byte(addr+"\n"), 0o644); err != nil {
			return fmt.Errorf("bench: tls-server: %w", err)
		}
	}
	log.Info("listening", "listener", "tls-baseline", "addr", addr, "hybrid_pq", o.HybridPQ)

	var ok, failed atomic.Uint64
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(5 * time.Millisecond) // out of file descriptors: let connections finish
				continue
			}
			return fmt.Errorf("bench: tls-server: accept: %w", err)
		}
		wg.Go(func() {
			if serveBaselineConn(c, cfg) {
				ok.Add(1)
			} else {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	log.Info("stopped", "listener", "tls-baseline", "handshakes", ok.Load(), "failed", failed.Load())
	return nil
}

// serveBaselineConn does one handshake; true when it succeeded.
func serveBaselineConn(c net.Conn, cfg *tls.Config) bool {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(baselineHandshakeTimeout))
	tc := tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		return false
	}
	_, err := tc.Write([]byte{1})
	_ = tc.Close()
	return err == nil
}

// StartBaselineOptions configures StartBaseline.
type StartBaselineOptions struct {
	// Binary is the warden executable (with the bench tls-server command);
	// default os.Executable().
	Binary string
	// Fleet supplies the client CAs (its data directory's) and the
	// consumer's certificate for the readiness check. Required.
	Fleet *FleetDir
	// Dir holds the server certificate, the CA bundle and the log;
	// default a new temporary directory (Proc.Dir).
	Dir string
	// ClassicKeyExchange offers X25519 and P-256 only, like
	// WardenOptions.ClassicKeyExchange.
	ClassicKeyExchange bool
	// Env adds environment variables (GOMAXPROCS=...).
	Env []string
	// StartTimeout and StopTimeout as in WardenOptions.
	StartTimeout time.Duration
	StopTimeout  time.Duration
}

// StartBaseline runs `<binary> bench tls-server` (ServeBaseline) as a
// child process on a free loopback port, with a throwaway server
// certificate shaped like Warden's (WriteServerCert) and the fleet data
// directory's CAs, and waits until the consumer's certificate completes a
// handshake. Proc.ServerRoots is what clients must trust. Its log is
// Dir/tls-baseline.log.
func StartBaseline(ctx context.Context, o StartBaselineOptions) (*Proc, error) {
	if o.Fleet == nil {
		return nil, errors.New("bench: tls baseline: a provisioned fleet is required (its CAs and consumer)")
	}
	bin, err := selfBinary(o.Binary)
	if err != nil {
		return nil, err
	}
	sf, err := prepareServer("tls baseline", o.Fleet, o.Dir)
	if err != nil {
		return nil, err
	}
	probe, dir, caFile, sc := sf.probe, sf.dir, sf.caFile, sf.cert
	addrFile := filepath.Join(dir, "tls-baseline.addr")
	if err := os.Remove(addrFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("bench: tls baseline: %w", err)
	}
	so := BaselineServerOptions{Listen: "127.0.0.1:0", CAFile: caFile, CertFile: sc.CertFile, KeyFile: sc.KeyFile,
		HybridPQ: !o.ClassicKeyExchange, AddrFile: addrFile}
	p, err := startProc(ctx, procSpec{
		name: "tls-baseline", path: bin, args: append([]string{"bench", "tls-server"}, baselineArgs(so)...),
		dir: dir, env: childEnv(o.Env), logPath: filepath.Join(dir, "tls-baseline.log"), stopTimeout: o.StopTimeout,
	})
	if err != nil {
		return nil, err
	}
	p.ServerCA, p.ServerCAPEM = sc.CAFile, sc.CAPEM
	roots, err := p.ServerRoots()
	if err != nil {
		return nil, p.failStart(err)
	}
	err = p.waitReady(ctx, o.StartTimeout, func(ctx context.Context) error {
		b, err := os.ReadFile(addrFile)
		if err != nil {
			return fmt.Errorf("no address yet: %w", err)
		}
		addr := string(trimNewline(b))
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s: %w", addrFile, err)
		}
		cs, _, err := baselineHandshake(ctx, addr, clientTLSConfig(probe, roots, serverName), nil, 2*time.Second)
		if err != nil {
			return err
		}
		p.Addr, p.TLS = addr, describeTLS(cs)
		return nil
	})
	if err != nil {
		return nil, p.failStart(err)
	}
	return p, nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// clientTLSConfig is a device's side of the handshake: its certificate,
// the server's roots, TLS 1.3 and no session cache, so that every
// handshake is a full one. Key-exchange preferences are Go's defaults, as
// in the device SDK.
func clientTLSConfig(cert tls.Certificate, roots *x509.CertPool, name string) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   name,
		MinVersion:   tls.VersionTLS13,
	}
}

// baselineHandshake dials, completes a handshake, waits for the server's
// byte (its acceptance of the client certificate) and closes with a reset,
// so that no TIME_WAIT socket holds a loopback port for a minute: at
// thousands of handshakes a second the ephemeral ports would run out.
//
// ctx ends the handshake early (the end of a run); timeout bounds it.
func baselineHandshake(ctx context.Context, addr string, cfg *tls.Config, local net.Addr, timeout time.Duration) (tls.ConnectionState, time.Duration, error) {
	start := time.Now()
	d := net.Dialer{LocalAddr: local, Timeout: timeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, 0, err
	}
	tcp, _ := raw.(*net.TCPConn)
	defer func() {
		if tcp != nil {
			_ = tcp.SetLinger(0)
		}
		raw.Close()
	}()
	_ = raw.SetDeadline(start.Add(timeout))
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return tls.ConnectionState{}, 0, fmt.Errorf("handshake: %w", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(tc, b[:]); err != nil {
		return tls.ConnectionState{}, 0, fmt.Errorf("the server did not accept the client certificate: %w", err)
	}
	return tc.ConnectionState(), time.Since(start), nil
}

// BaselineOptions configures HandshakeBaseline.
type BaselineOptions struct {
	// Addr is the bare TLS server's address (Proc.Addr of StartBaseline).
	// Any server that writes a byte after the handshake would do.
	Addr string
	// ServerName and RootCAs check the server's certificate (Proc.
	// ServerName and Proc.ServerRoots); ServerName defaults to localhost.
	ServerName string
	RootCAs    *x509.CertPool
	// Certificates are the device credentials to handshake with, used in
	// turn (the simulator's Fleet.Devices[i].Certificate).
	Certificates []tls.Certificate
	// Concurrency is the number of handshakes in flight; default
	// DefaultBaselineConcurrency.
	Concurrency int
	// Duration of the run; default DefaultBaselineDuration.
	Duration time.Duration
	// ServerPID, if set, is the server process whose CPU time is measured
	// from /proc (Proc.PID).
	ServerPID int
	// LocalAddrs are source IP addresses (127.0.0.x) used in turn, as the
	// simulator spreads its devices; default the kernel's choice.
	LocalAddrs []string
	// Timeout bounds one handshake; default 1 minute.
	Timeout time.Duration
}

// BaselineResult is what HandshakeBaseline measured.
type BaselineResult struct {
	Handshakes uint64        `json:"handshakes"`
	Failures   uint64        `json:"failures"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	// PerSecond is completed handshakes per second of Elapsed.
	PerSecond float64 `json:"handshakes_per_second"`
	// ServerCPU is the server process's user + system time during the
	// run and ServerCPUPerHandshake that over Handshakes (0 without
	// ServerPID). ClientCPU is this process's, for judging whether the
	// client side was the bottleneck (both share the machine's cores).
	ServerCPU             time.Duration `json:"server_cpu_ns"`
	ServerCPUPerHandshake time.Duration `json:"server_cpu_per_handshake_ns"`
	ClientCPU             time.Duration `json:"client_cpu_ns"`
	// Latency is per handshake: connect, handshake, the server's byte.
	Latency sim.Latency `json:"latency"`
	// TLS is what was negotiated, e.g. "TLS 1.3, X25519MLKEM768".
	TLS string `json:"tls"`
	// FirstError is the first failure's message, if any.
	FirstError string `json:"first_error,omitempty"`
}

// HandshakeBaseline runs full mutual-TLS handshakes against Addr from
// Concurrency loops for Duration, each with the next device certificate,
// and measures the rate, the server's CPU per handshake and the latency.
// Failures are counted, not fatal; the error is for runs that cannot start.
func HandshakeBaseline(ctx context.Context, o BaselineOptions) (BaselineResult, error) {
	if o.Addr == "" || o.RootCAs == nil || len(o.Certificates) == 0 {
		return BaselineResult{}, errors.New("bench: handshake baseline: the address, the server's roots and at least one certificate are required")
	}
	if o.ServerName == "" {
		o.ServerName = serverName
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultBaselineConcurrency
	}
	if o.Duration <= 0 {
		o.Duration = DefaultBaselineDuration
	}
	if o.Timeout <= 0 {
		o.Timeout = baselineHandshakeTimeout
	}
	var locals []net.Addr
	for _, a := range o.LocalAddrs {
		ip := net.ParseIP(a)
		if ip == nil {
			return BaselineResult{}, fmt.Errorf("bench: handshake baseline: source address %q is not an IP address", a)
		}
		locals = append(locals, &net.TCPAddr{IP: ip})
	}
	cfgs := make([]*tls.Config, len(o.Certificates))
	for i, c := range o.Certificates {
		cfgs[i] = clientTLSConfig(c, o.RootCAs, o.ServerName)
	}

	var before, clientBefore Stats
	var err error
	if o.ServerPID > 0 {
		if before, err = ProcStats(o.ServerPID); err != nil {
			return BaselineResult{}, err
		}
	}
	clientBefore, _ = ProcStats(os.Getpid())

	// Ended by a timer, not a context deadline: sockets and dials take a
	// context's deadline as their own and could fail (and be counted)
	// a moment before ctx.Err reports the end.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	endRun := time.AfterFunc(o.Duration, cancel)
	defer endRun.Stop()
	type worker struct {
		hist     sim.Histogram
		ok, fail uint64
		firstErr error
		tls      string
	}
	workers := make([]worker, o.Concurrency)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range workers {
		w := &workers[i]
		wg.Go(func() {
			for n := i; runCtx.Err() == nil; n += len(workers) {
				var local net.Addr
				if len(locals) > 0 {
					local = locals[n%len(locals)]
				}
				cs, d, err := baselineHandshake(runCtx, o.Addr, cfgs[n%len(cfgs)], local, o.Timeout)
				if err != nil {
					if runCtx.Err() != nil {
						return // cut off by the end of the run: not a failure
					}
					w.fail++
					if w.firstErr == nil {
						w.firstErr = err
					}
					continue
				}
				w.ok++
				w.hist.Record(d)
				if w.tls == "" {
					w.tls = describeTLS(cs)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := BaselineResult{Elapsed: elapsed}
	var hist sim.Histogram
	for i := range workers {
		w := &workers[i]
		res.Handshakes += w.ok
		res.Failures += w.fail
		hist.Merge(&w.hist)
		if res.FirstError == "" && w.firstErr != nil {
			res.FirstError = w.firstErr.Error()
		}
		if res.TLS == "" {
			res.TLS = w.tls
		}
	}
	res.Latency = hist.Latency()
	if elapsed > 0 {
		res.PerSecond = float64(res.Handshakes) / elapsed.Seconds()
	}
	if o.ServerPID > 0 {
		after, err := ProcStats(o.ServerPID)
		if err != nil {
			return res, err
		}
		res.ServerCPU = after.CPUSince(before)
		res.ServerCPUPerHandshake = CPUPer(before, after, res.Handshakes)
	}
	if clientAfter, err := ProcStats(os.Getpid()); err == nil && clientBefore.PID != 0 {
		res.ClientCPU = clientAfter.CPUSince(clientBefore)
	}
	return res, nil
}

// serverFiles is what a yardstick server started by the benchmark needs on
// disk: its directory, the Warden CAs its clients' certificates chain to,
// a throwaway server certificate, and the consumer's credentials for the
// readiness probe.
type serverFiles struct {
	probe  tls.Certificate
	dir    string
	caFile string
	cert   ServerCert
}

// prepareServer writes serverFiles into dir (a new temporary directory if
// empty); name prefixes errors.
func prepareServer(name string, fleet *FleetDir, dir string) (serverFiles, error) {
	var sf serverFiles
	probe, err := tls.LoadX509KeyPair(fleet.ConsumerCertFile(), fleet.ConsumerKeyFile())
	if err != nil {
		return sf, fmt.Errorf("bench: %s: load the consumer's credentials: %w", name, err)
	}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "warden-bench-"+strings.ReplaceAll(name, " ", "-")+"-"); err != nil {
			return sf, fmt.Errorf("bench: %s: %w", name, err)
		}
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return sf, fmt.Errorf("bench: %s: %w", name, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return sf, fmt.Errorf("bench: %s: %w", name, err)
	}
	caBundle, err := WardenCABundle(fleet.DataDir)
	if err != nil {
		return sf, err
	}
	caFile := filepath.Join(dir, "client-ca.pem")
	if err := fileutil.WriteFileAtomic(caFile, caBundle, 0o644); err != nil {
		return sf, fmt.Errorf("bench: %s: %w", name, err)
	}
	sc, err := WriteServerCert(dir)
	if err != nil {
		return sf, err
	}
	return serverFiles{probe: probe, dir: dir, caFile: caFile, cert: sc}, nil
}
