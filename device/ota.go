package device

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/otaproto"
)

// OTA transports: how the agent checks for offers, downloads and reports.
const (
	// OTATransportMQTT uses the client's own connection: reports on
	// private/<id>/ota/status, offers on private/<id>/ota/notify, and the
	// image in blocks requested on private/<id>/ota/get and received on
	// private/<id>/ota/block.
	OTATransportMQTT = "mqtt"
	// OTATransportHTTPS checks and reports over Warden's HTTPS endpoints
	// (OTAConfig.HTTPSBase) and downloads the image from the offer's URL,
	// resuming with Range requests. Offers Warden pushes over MQTT are
	// taken too.
	OTATransportHTTPS = "https"
)

// OTA defaults.
const (
	// DefaultOTABlockTimeout is how long the agent waits for a requested
	// block (MQTT), or for more bytes of a download (HTTPS), before it asks
	// again.
	DefaultOTABlockTimeout = 5 * time.Second
	// DefaultOTARetries is how many times in a row the agent asks again
	// without getting a byte before the update fails.
	DefaultOTARetries = 5
)

// Event states of the agent's own, beside the otaproto.State* values.
const (
	// OTAOffered: an offer's statement verified and passed the policy;
	// the download starts.
	OTAOffered = "offered"
	// OTARefused: an offer was refused before a byte was downloaded (its
	// statement does not verify, fails the policy, or disagrees with the
	// offer). Warden gets a "failed" report.
	OTARefused = "refused"
)

const (
	// otaEnvelopeContentType marks a sealed HTTPS request body, as
	// Warden's OTA endpoints expect it.
	otaEnvelopeContentType = "application/vnd.warden.envelope"
	// otaCheckChannel is the pseudo-channel a sealed HTTPS check is sealed
	// for: private/<id>/ota/check.
	otaCheckChannel = "check"
	// otaReportTimeout bounds one status report; a report that cannot be
	// delivered in time is logged and dropped, and never stops an update.
	otaReportTimeout = 15 * time.Second
	// maxOTAResponse bounds an offer read from MQTT or HTTPS (a statement
	// is at most 1 KiB).
	maxOTAResponse = 64 << 10
	// otaBlockQueue holds blocks between the receive goroutine and the
	// download; when it is full a block is dropped and asked for again.
	otaBlockQueue = 8
	// otaCopyBuffer is the HTTPS read size.
	otaCopyBuffer = 32 << 10
)

// Installer installs a verified image: typically it writes file to
// MCUboot's secondary slot, marks it for a test boot and reboots. img is
// the parsed image and st the verified release statement it matches; file
// is exactly the bytes the statement names.
//
// The agent reports "installing" before it calls the Installer (an
// Installer that reboots the device does not return), and "failed" with
// the error text if it returns an error. On the next start the application
// calls Agent.Start, which reports "current" with the running version
// (OTAConfig.Running), and Warden turns that into booted or rolled back. A
// simulated device may instead "boot" in place: call Agent.Booted and
// return nil.
type Installer func(ctx context.Context, img *firmware.Image, file []byte, st firmware.Statement) error

// OTAConfig configures a device's OTA agent (Client.OTA).
type OTAConfig struct {
	// ReleaseKey is the pinned release public key, an *ecdsa.PublicKey on
	// P-256 or an ed25519.PublicKey (firmware.ParsePublicKeyPEM). Required.
	// Nothing but a release statement it verifies is trusted: an offer's
	// other fields only say where to fetch.
	ReleaseKey crypto.PublicKey

	// Model is the device model a release must name. Required.
	Model string

	// Store keeps the agent's state and partial downloads in non-volatile
	// storage (FileOTAStore). Required.
	Store OTAStore

	// Installer receives each verified image. Required.
	Installer Installer

	// Running, if set, says what the device runs now: the image version
	// and its security counter (for example from the primary slot's
	// MCUboot header). Start calls it to learn whether an installed
	// release booted. A device that reboots into new firmware needs it:
	// without it the agent reports the version in its Store, which only
	// Booted changes (and which is 0.0.0+0 until something is saved).
	Running func() (firmware.Version, uint32, error)

	// Transport is OTATransportMQTT (the default) or OTATransportHTTPS.
	Transport string

	// HTTPSBase is Warden's HTTPS address for checks and reports, e.g.
	// "https://warden.example.com:8443"; required for the HTTPS
	// transport. Image URLs come from the offers.
	HTTPSBase string

	// HTTPClient makes the HTTPS requests. By default the agent builds one
	// with the client's trust rules: the pinned Warden root only
	// (Config.RootCAs, or RootCAs below), TLS 1.2 or later (1.3
	// preferred, ECDHE with AEAD only), the host name of each URL checked,
	// the device certificate sent when the server asks for it, no proxy
	// and no redirects.
	HTTPClient *http.Client

	// RootCAs is the Warden root for the default HTTPS client when the
	// client has none (an envelope device on plain mqtt:// servers only).
	// If set, it replaces Config.RootCAs for HTTPS.
	RootCAs *x509.CertPool

	// BlockSize is the MQTT block size, 1 to otaproto.MaxBlockSize
	// (default otaproto.DefaultBlockSize).
	BlockSize int

	// BlockTimeout is how long the agent waits for a requested block, or
	// for more bytes of an HTTPS download, before it asks again (default
	// DefaultOTABlockTimeout).
	BlockTimeout time.Duration

	// Retries is how many times in a row the agent asks again without
	// getting a byte before the update fails (default DefaultOTARetries).
	Retries int

	// AllowDowngrade accepts releases with a lower version (never a lower
	// security counter); see firmware.Policy.
	AllowDowngrade bool

	// Now is the clock release statements are checked against (default
	// time.Now).
	Now func() time.Time

	// Logger receives the agent's events; nil uses the client's.
	Logger *slog.Logger

	// OnEvent, if set, is called with every step of an update. It runs on
	// the agent's goroutines and must not block for long.
	OnEvent func(OTAEvent)
}

// OTAEvent is one step of an update, for applications and tests.
type OTAEvent struct {
	// State is OTAOffered, OTARefused, or one of otaproto.StateDownloading,
	// StateVerified, StateInstalling, StateFailed, StateBooted and
	// StateRolledBack.
	State   string
	Rollout string
	// SHA256 is the image file's, from the verified statement (from the
	// offer when the statement did not verify).
	SHA256 string
	// Version is the release's version (the running version for
	// StateBooted and StateRolledBack); zero if the statement did not
	// verify.
	Version firmware.Version
	// Offset and Size are the bytes downloaded so far and the image's size.
	Offset, Size int64
	// Err says why, for OTARefused, StateFailed and StateRolledBack. It
	// wraps firmware's sentinel errors (firmware.ErrReplay, ErrDigest, ...)
	// where they apply.
	Err error
}

// Agent is a device's OTA update agent (docs/firmware.md, "Delivery"): it
// asks Warden for offers, verifies each offer's release statement against
// the pinned release key and the device's policy before downloading
// anything, downloads the image (resuming after interruptions and
// restarts), ties it to the statement, hands it to the Installer and
// reports every step to Warden. It runs one update at a time. Its methods
// are safe for concurrent use.
type Agent struct {
	c       *Client
	cfg     otaSettings
	log     *slog.Logger
	seal    bool         // an envelope device that seals its uplinks seals OTA messages too
	ownHTTP *http.Client // built by the agent, closed by Close
	blocks  chan []byte  // MQTT blocks from the receive goroutine
	life    context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup

	stMu  sync.Mutex // serialises state changes and their Save
	state OTAState

	mu      sync.Mutex
	started bool
	closed  bool
	job     *otaJob // the update under way
}

// otaJob is the update under way.
type otaJob struct {
	sha string
	// offers carries later offers of the same image (with a fresher
	// download URL); the newest wins.
	offers chan otaproto.Offer
}

// otaSettings is a validated OTAConfig.
type otaSettings struct {
	key            crypto.PublicKey
	keyID          string
	model          string
	store          OTAStore
	install        Installer
	running        func() (firmware.Version, uint32, error)
	transport      string
	base           string // HTTPSBase without a trailing slash
	http           *http.Client
	blockSize      int
	blockTimeout   time.Duration
	retries        int
	allowDowngrade bool
	now            func() time.Time
	onEvent        func(OTAEvent)
}

// otaRelease identifies the release an update is about, for reports.
type otaRelease struct {
	rollout string
	sha     string
	version firmware.Version
	size    int64
}

// OTA returns the client's OTA agent; call Start to run it. A client has
// at most one agent at a time (they would share the OTA topics).
func (c *Client) OTA(cfg OTAConfig) (*Agent, error) {
	s, err := c.validateOTA(cfg)
	if err != nil {
		return nil, fmt.Errorf("device: ota: %w", err)
	}
	if c.life.Err() != nil {
		return nil, fmt.Errorf("device: ota: %w", ErrClosed)
	}
	if !c.otaAgent.CompareAndSwap(false, true) {
		return nil, errors.New("device: ota: this client already has an OTA agent; close it first")
	}
	log := cfg.Logger
	if log == nil {
		log = c.s.log
	} else {
		log = log.With(slog.String("device", c.s.id))
	}
	a := &Agent{
		c:      c,
		cfg:    s,
		log:    log.With(slog.String("component", "ota")),
		seal:   c.env != nil && c.env.cfg.sealUp,
		blocks: make(chan []byte, otaBlockQueue),
	}
	if cfg.HTTPClient == nil && s.http != nil {
		a.ownHTTP = s.http
	}
	a.life, a.stop = context.WithCancel(c.life)
	return a, nil
}

func (c *Client) validateOTA(cfg OTAConfig) (otaSettings, error) {
	s := otaSettings{
		key:            cfg.ReleaseKey,
		model:          cfg.Model,
		store:          cfg.Store,
		install:        cfg.Installer,
		running:        cfg.Running,
		transport:      cfg.Transport,
		http:           cfg.HTTPClient,
		blockSize:      cfg.BlockSize,
		blockTimeout:   cfg.BlockTimeout,
		retries:        cfg.Retries,
		allowDowngrade: cfg.AllowDowngrade,
		now:            cfg.Now,
		onEvent:        cfg.OnEvent,
	}
	if cfg.ReleaseKey == nil {
		return s, errors.New("OTAConfig.ReleaseKey is nil; pin the release public key (firmware.ParsePublicKeyPEM of the release.pub that `warden fw keygen` prints)")
	}
	id, err := firmware.KeyID(cfg.ReleaseKey)
	if err != nil {
		return s, fmt.Errorf("OTAConfig.ReleaseKey: %w", err)
	}
	s.keyID = id
	if cfg.Model == "" {
		return s, errors.New("OTAConfig.Model is empty; it must be the model name the device's releases are signed for")
	}
	if cfg.Store == nil {
		return s, errors.New("OTAConfig.Store is nil; use a FileOTAStore in non-volatile storage")
	}
	if cfg.Installer == nil {
		return s, errors.New("OTAConfig.Installer is nil; the agent needs something to hand verified images to")
	}
	switch {
	case s.blockSize == 0:
		s.blockSize = otaproto.DefaultBlockSize
	case s.blockSize < 0 || s.blockSize > otaproto.MaxBlockSize:
		return s, fmt.Errorf("OTAConfig.BlockSize %d is out of range [1, %d]", cfg.BlockSize, otaproto.MaxBlockSize)
	}
	switch {
	case s.blockTimeout == 0:
		s.blockTimeout = DefaultOTABlockTimeout
	case s.blockTimeout < 0:
		return s, fmt.Errorf("OTAConfig.BlockTimeout %v must not be negative", cfg.BlockTimeout)
	}
	switch {
	case s.retries == 0:
		s.retries = DefaultOTARetries
	case s.retries < 0:
		return s, fmt.Errorf("OTAConfig.Retries %d must not be negative", cfg.Retries)
	}
	if s.now == nil {
		s.now = time.Now
	}

	switch cfg.Transport {
	case "", OTATransportMQTT:
		s.transport = OTATransportMQTT
		if cfg.HTTPSBase != "" {
			return s, errors.New("OTAConfig.HTTPSBase is set, but Transport is not \"https\"; set both or neither")
		}
		return s, nil
	case OTATransportHTTPS:
	default:
		return s, fmt.Errorf("OTAConfig.Transport %q is not %q or %q", cfg.Transport, OTATransportMQTT, OTATransportHTTPS)
	}
	base, err := parseHTTPSBase(cfg.HTTPSBase)
	if err != nil {
		return s, err
	}
	s.base = base
	if s.http == nil {
		if s.http, err = c.otaHTTPClient(cfg.RootCAs); err != nil {
			return s, err
		}
	}
	return s, nil
}

func parseHTTPSBase(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("OTAConfig.HTTPSBase is empty; the HTTPS transport needs Warden's HTTPS address, e.g. https://warden.example.com:8443")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("OTAConfig.HTTPSBase: %w", err)
	}
	switch {
	case !strings.EqualFold(u.Scheme, "https"):
		return "", fmt.Errorf("OTAConfig.HTTPSBase %q is not an https:// URL", u.Redacted())
	case u.Host == "":
		return "", fmt.Errorf("OTAConfig.HTTPSBase %q has no host", u.Redacted())
	case u.User != nil:
		return "", fmt.Errorf("OTAConfig.HTTPSBase %q carries user information; devices authenticate with their certificate or envelope", u.Redacted())
	case u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("OTAConfig.HTTPSBase %q has a query or fragment; give the scheme, host and port (and a path prefix, if any)", u.Redacted())
	}
	u.Scheme = "https"
	return strings.TrimSuffix(u.String(), "/"), nil
}

// otaTLS12Suites are the TLS 1.2 suites the default HTTPS client offers:
// forward-secret ECDHE with an AEAD only, as Warden's compat profile.
func otaTLS12Suites() []uint16 {
	return []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	}
}

// otaHTTPClient builds the default HTTPS client from the client's TLS
// settings. The host name is checked against each URL's host, not
// Config.ServerName, which names the broker.
func (c *Client) otaHTTPClient(roots *x509.CertPool) (*http.Client, error) {
	var tc *tls.Config
	switch {
	case c.s.tls != nil:
		tc = c.s.tls.Clone()
		tc.ServerName = ""
		if roots != nil {
			tc.RootCAs = roots
		}
	case roots != nil:
		tc = &tls.Config{RootCAs: roots}
	default:
		return nil, errors.New("the HTTPS transport needs the Warden root, and this client has none (it uses plain mqtt:// servers only): set OTAConfig.RootCAs")
	}
	tc.MinVersion = tls.VersionTLS12
	tc.CipherSuites = otaTLS12Suites()
	tc.Renegotiation = tls.RenegotiateNever
	d := &net.Dialer{Timeout: c.s.connectTimeout, KeepAlive: 30 * time.Second}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil, // never a proxy from the environment
			DialContext:           d.DialContext,
			TLSClientConfig:       tc,
			TLSHandshakeTimeout:   c.s.connectTimeout,
			ResponseHeaderTimeout: 30 * time.Second,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          2,
			IdleConnTimeout:       90 * time.Second,
		},
		// Warden never redirects; a redirect is answered as an error
		// rather than followed with the device's headers.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// Start loads the agent's state, subscribes to the device's OTA topics
// and reports "current" with the running version, which asks Warden for
// an offer. Offers are then handled in the background, one update at a
// time. ctx bounds only Start itself; the agent runs until Close or the
// client's Close.
//
// If an update was installed before this start, Start first settles it
// (OTAConfig.Running): the release is now running (StateBooted event) or
// the bootloader reverted it (StateRolledBack event). Either way Warden
// learns it from the "current" report.
//
// If the first report fails, Start returns the error but the agent stays
// started: call Check to try again.
func (a *Agent) Start(ctx context.Context) error {
	a.mu.Lock()
	switch {
	case a.closed || a.life.Err() != nil:
		a.mu.Unlock()
		return fmt.Errorf("device: ota: start: %w", ErrClosed)
	case a.started:
		a.mu.Unlock()
		return errors.New("device: ota: start: the agent is already started")
	}
	a.started = true
	a.mu.Unlock()

	st, err := a.cfg.store.Load()
	if err != nil {
		a.setUnstarted()
		return fmt.Errorf("device: ota: start: %w", err)
	}
	if err := a.settle(st); err != nil {
		a.setUnstarted()
		return fmt.Errorf("device: ota: start: %w", err)
	}

	id := a.c.s.id
	if err := a.c.Subscribe(ctx, otaproto.Topic(id, otaproto.TopicNotify), 1, a.onNotify); err != nil {
		a.setUnstarted()
		return fmt.Errorf("device: ota: start: %w", err)
	}
	if a.cfg.transport == OTATransportMQTT {
		// Warden sends blocks at QoS 0: a lost one is asked for again.
		if err := a.c.Subscribe(ctx, otaproto.Topic(id, otaproto.TopicBlock), 0, a.onBlock); err != nil {
			a.setUnstarted()
			return fmt.Errorf("device: ota: start: %w", err)
		}
	}
	st = a.snapshot()
	a.log.Info("OTA agent started", "transport", a.cfg.transport, "version", st.Version.String(),
		"security_counter", st.SecurityCounter, "sequence", st.lastSequence(), "release_key", a.cfg.keyID)
	if err := a.checkNow(ctx, false); err != nil {
		return fmt.Errorf("device: ota: start: %w", err)
	}
	return nil
}

func (a *Agent) setUnstarted() {
	a.mu.Lock()
	a.started = false
	a.mu.Unlock()
}

// settle adopts a loaded state, resolving a pending install against what
// the device runs now.
func (a *Agent) settle(st OTAState) error {
	running, counter := st.Version, st.SecurityCounter
	if a.cfg.running != nil {
		v, c, err := a.cfg.running()
		if err != nil {
			return fmt.Errorf("OTAConfig.Running: %w", err)
		}
		running, counter = v, c
	}
	next := st
	next.Pending = nil
	var ev *OTAEvent
	if p := st.Pending; p != nil {
		if running == p.Version {
			next.Sequence = max(next.Sequence, p.Sequence)
			counter = max(counter, p.SecurityCounter)
			ev = &OTAEvent{State: otaproto.StateBooted, Rollout: p.Rollout, SHA256: p.SHA256, Version: running}
			a.log.Info("the installed release is running", "rollout", p.Rollout, "sha256", p.SHA256, "version", running.String())
		} else {
			err := fmt.Errorf("the device runs %s, not the installed %s: the bootloader reverted the update", running, p.Version)
			ev = &OTAEvent{State: otaproto.StateRolledBack, Rollout: p.Rollout, SHA256: p.SHA256, Version: running, Err: err}
			a.log.Warn("the installed release is not running", "rollout", p.Rollout, "sha256", p.SHA256, "reason", err)
		}
	}
	if running != st.Version && st.Pending == nil {
		a.log.Warn("the device runs another version than the agent's state says; adopting it", "stored", st.Version.String(), "running", running.String())
	}
	next.Version = running
	// The floor never goes down: a lower counter reported by Running is
	// an error of the reader, not a reason to accept older releases.
	next.SecurityCounter = max(st.SecurityCounter, counter)
	next.Accepted = max(next.Accepted, next.Sequence)

	a.stMu.Lock()
	if !sameOTAState(next, st) {
		if err := a.cfg.store.Save(next); err != nil {
			a.stMu.Unlock()
			return err
		}
	}
	a.state = next
	a.stMu.Unlock()
	if ev != nil {
		a.emit(*ev)
	}
	return nil
}

func sameOTAState(a, b OTAState) bool {
	if (a.Pending == nil) != (b.Pending == nil) || (a.Pending != nil && *a.Pending != *b.Pending) {
		return false
	}
	a.Pending, b.Pending = nil, nil
	return a == b
}

// Check asks Warden for an offer now. With the HTTPS transport it checks
// and runs an offered update to its end before it returns (an update
// already under way in the background is left to finish there); the error
// says why the check or the update failed. With MQTT it reports "current",
// and Warden answers with an offer if one waits, which is handled in the
// background.
func (a *Agent) Check(ctx context.Context) error {
	a.mu.Lock()
	started, closed := a.started, a.closed
	a.mu.Unlock()
	switch {
	case closed || a.life.Err() != nil:
		return fmt.Errorf("device: ota: check: %w", ErrClosed)
	case !started:
		return errors.New("device: ota: check: call Start first")
	}
	if err := a.checkNow(ctx, true); err != nil {
		return fmt.Errorf("device: ota: check: %w", err)
	}
	return nil
}

// checkNow reports "current" (MQTT) or checks over HTTPS and takes the
// offer, waiting for its update if wait is set.
func (a *Agent) checkNow(ctx context.Context, wait bool) error {
	st := a.snapshot()
	if a.cfg.transport == OTATransportMQTT {
		return a.publishReport(ctx, otaproto.Report{State: otaproto.StateCurrent, Version: st.Version.String(),
			SecurityCounter: st.SecurityCounter, Sequence: st.Sequence})
	}
	o, err := a.checkHTTP(ctx)
	if err != nil || o == nil {
		return err
	}
	return a.take(ctx, *o, wait)
}

// Booted records that the device runs version v, with the image's
// security counter and the sequence number of its release statement, and
// reports it to Warden: "booted" for the release being installed,
// "current" otherwise. A simulated device's Installer calls it to boot the
// new image in place; a real device relies on Start and
// OTAConfig.Running instead.
func (a *Agent) Booted(ctx context.Context, v firmware.Version, counter uint32, sequence uint64) error {
	a.mu.Lock()
	started := a.started
	a.mu.Unlock()
	if !started {
		return errors.New("device: ota: booted: call Start first")
	}
	a.stMu.Lock()
	st := a.state
	p := st.Pending
	st.Version = v
	st.SecurityCounter = max(st.SecurityCounter, counter)
	st.Sequence = max(st.Sequence, sequence)
	st.Accepted = max(st.Accepted, st.Sequence)
	st.Pending = nil
	if err := a.cfg.store.Save(st); err != nil {
		a.stMu.Unlock()
		return fmt.Errorf("device: ota: booted: %w", err)
	}
	a.state = st
	a.stMu.Unlock()

	if p == nil || p.Version != v {
		a.log.Info("running version recorded", "version", v.String(), "security_counter", st.SecurityCounter)
		if err := a.checkNow(ctx, false); err != nil {
			return fmt.Errorf("device: ota: booted: %w", err)
		}
		return nil
	}
	a.log.Info("booted the new release", "rollout", p.Rollout, "sha256", p.SHA256, "version", v.String())
	a.emit(OTAEvent{State: otaproto.StateBooted, Rollout: p.Rollout, SHA256: p.SHA256, Version: v})
	rep := otaproto.Report{State: otaproto.StateBooted, Rollout: p.Rollout, SHA256: p.SHA256, Version: v.String(),
		SecurityCounter: st.SecurityCounter, Sequence: st.Sequence}
	if err := a.sendReport(ctx, rep); err != nil {
		return fmt.Errorf("device: ota: booted: %w", err)
	}
	return nil
}

// State returns a copy of the agent's state.
func (a *Agent) State() OTAState {
	st := a.snapshot()
	if st.Pending != nil {
		p := *st.Pending
		st.Pending = &p
	}
	return st
}

// Close stops the agent and waits for an update under way to stop; its
// partial download stays in the Store, to be resumed. The client stays
// connected. Calling Close again returns nil.
func (a *Agent) Close() error {
	a.stop()
	a.mu.Lock()
	already := a.closed
	a.closed = true
	a.mu.Unlock()
	a.wg.Wait()
	if !already {
		if a.ownHTTP != nil {
			a.ownHTTP.CloseIdleConnections()
		}
		a.c.otaAgent.Store(false)
	}
	return nil
}

func (a *Agent) snapshot() OTAState {
	a.stMu.Lock()
	defer a.stMu.Unlock()
	return a.state
}

func (a *Agent) emit(ev OTAEvent) {
	if a.cfg.onEvent != nil {
		a.cfg.onEvent(ev)
	}
}

// onNotify takes an offer Warden pushes. It runs on the receive goroutine,
// so the update runs elsewhere.
func (a *Agent) onNotify(m Message) {
	if a.life.Err() != nil {
		return
	}
	if len(m.Payload) > maxOTAResponse {
		a.log.Warn("OTA offer too large; ignored", "bytes", len(m.Payload))
		return
	}
	var o otaproto.Offer
	if err := json.Unmarshal(m.Payload, &o); err != nil {
		a.log.Warn("OTA offer is not valid JSON; ignored", "reason", err)
		return
	}
	a.log.Debug("OTA offer received", "rollout", o.Rollout, "sha256", o.SHA256)
	if err := a.take(a.life, o, false); err != nil && !errors.Is(err, ErrClosed) {
		a.log.Warn("OTA offer not taken", "reason", err)
	}
}

// onBlock queues an MQTT block for the download under way.
func (a *Agent) onBlock(m Message) {
	if a.life.Err() != nil {
		return
	}
	select {
	case a.blocks <- bytes.Clone(m.Payload):
	default:
		a.log.Debug("OTA block dropped: the download is not keeping up; it will be asked for again")
	}
}

// take starts an update for o, or hands o to the update under way if it is
// for the same image (an offer with a fresher download URL). Another
// image's offer is ignored while an update runs. With wait it runs the
// update on the calling goroutine and returns its outcome.
func (a *Agent) take(ctx context.Context, o otaproto.Offer, wait bool) error {
	a.mu.Lock()
	if a.closed || a.life.Err() != nil {
		a.mu.Unlock()
		return ErrClosed
	}
	if j := a.job; j != nil {
		if o.SHA256 == j.sha {
			select {
			case <-j.offers:
			default:
			}
			j.offers <- o
			a.mu.Unlock()
			a.log.Debug("offer for the image being downloaded; its URL is kept for the download", "rollout", o.Rollout, "sha256", o.SHA256)
			return nil
		}
		a.mu.Unlock()
		a.log.Info("an update is under way; another image's offer is ignored until it ends", "running_sha256", j.sha, "offered_sha256", o.SHA256, "rollout", o.Rollout)
		return nil
	}
	j := &otaJob{sha: o.SHA256, offers: make(chan otaproto.Offer, 1)}
	a.job = j
	a.wg.Add(1)
	a.mu.Unlock()

	run := func(ctx context.Context) error {
		defer a.wg.Done()
		defer func() {
			a.mu.Lock()
			if a.job == j {
				a.job = nil
			}
			a.mu.Unlock()
		}()
		return a.update(ctx, j, o)
	}
	if !wait {
		go func() { _ = run(a.life) }()
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(a.life, cancel)
	defer stop()
	return run(ctx)
}

// update runs one offer through the steps of docs/firmware.md: verify the
// statement and apply the policy, download, match the image to the
// statement, install.
func (a *Agent) update(ctx context.Context, j *otaJob, o otaproto.Offer) error {
	rel := otaRelease{rollout: o.Rollout, sha: o.SHA256, size: o.Size}
	st := a.snapshot()

	s, err := firmware.VerifyStatement(o.Statement, a.cfg.key)
	if err != nil {
		return a.fail(ctx, rel, OTARefused, fmt.Errorf("statement: %w", err))
	}
	rel.sha, rel.version, rel.size = hex.EncodeToString(s.ImageSHA256[:]), s.Version, s.ImageSize
	if err := offerMatches(o, s); err != nil {
		return a.fail(ctx, rel, OTARefused, err)
	}
	pol := firmware.Policy{Model: a.cfg.model, Current: st.Version, SecurityCounter: st.SecurityCounter,
		LastSequence: st.lastSequence(), AllowDowngrade: a.cfg.allowDowngrade}
	if err := s.Check(pol, a.cfg.now()); err != nil {
		return a.fail(ctx, rel, OTARefused, fmt.Errorf("statement: %w", err))
	}
	if a.cfg.transport == OTATransportMQTT && s.ImageSize > math.MaxUint32 {
		return a.fail(ctx, rel, OTARefused, fmt.Errorf("the image of %d bytes is too large for MQTT delivery (at most 4 GiB); use the HTTPS transport", s.ImageSize))
	}
	a.log.Info("release accepted; downloading", "rollout", rel.rollout, "sha256", rel.sha, "version", s.Version.String(),
		"bytes", s.ImageSize, "sequence", s.Sequence, "transport", a.cfg.transport)
	a.emit(OTAEvent{State: OTAOffered, Rollout: rel.rollout, SHA256: rel.sha, Version: rel.version, Size: rel.size})

	img, file, err := a.fetchAndMatch(ctx, j, o, s, rel)
	if err != nil {
		if ctx.Err() != nil {
			a.log.Info("update interrupted; the download resumes on the next offer", "rollout", rel.rollout, "reason", err)
			return fmt.Errorf("device: ota: rollout %q: %w", rel.rollout, ctx.Err())
		}
		return a.fail(ctx, rel, otaproto.StateFailed, err)
	}
	a.log.Info("image verified", "rollout", rel.rollout, "sha256", rel.sha, "version", s.Version.String())
	a.emit(OTAEvent{State: otaproto.StateVerified, Rollout: rel.rollout, SHA256: rel.sha, Version: rel.version, Offset: rel.size, Size: rel.size})
	a.report(ctx, a.releaseReport(otaproto.StateVerified, rel))

	// The statement is spent before the Installer sees the image: if the
	// new image never boots, the same statement must not install it
	// again and again.
	pending := &OTAPending{Rollout: rel.rollout, SHA256: rel.sha, Version: s.Version, SecurityCounter: s.SecurityCounter, Sequence: s.Sequence}
	a.stMu.Lock()
	next := a.state
	next.Accepted = max(next.Accepted, s.Sequence)
	next.Pending = pending
	err = a.cfg.store.Save(next)
	if err == nil {
		a.state = next
	}
	a.stMu.Unlock()
	if err != nil {
		return a.fail(ctx, rel, otaproto.StateFailed, fmt.Errorf("install: record the release before installing it: %w", err))
	}
	if err := a.cfg.store.RemoveDownload(); err != nil {
		a.log.Warn("could not remove the finished download", "reason", err)
	}

	a.emit(OTAEvent{State: otaproto.StateInstalling, Rollout: rel.rollout, SHA256: rel.sha, Version: rel.version, Offset: rel.size, Size: rel.size})
	a.report(ctx, a.releaseReport(otaproto.StateInstalling, rel))
	if err := a.cfg.install(ctx, img, file, s); err != nil {
		a.stMu.Lock()
		if a.state.Pending == pending {
			next := a.state
			next.Pending = nil
			if serr := a.cfg.store.Save(next); serr == nil {
				a.state = next
			} else {
				a.log.Warn("could not clear the pending release", "reason", serr)
			}
		}
		a.stMu.Unlock()
		return a.fail(ctx, rel, otaproto.StateFailed, fmt.Errorf("install: %w", err))
	}
	a.log.Info("image handed to the installer", "rollout", rel.rollout, "sha256", rel.sha, "version", s.Version.String())
	return nil
}

// offerMatches refuses an offer whose hints disagree with its verified
// statement: something between the release manager and the device is
// wrong, and nothing of it should be fetched.
func offerMatches(o otaproto.Offer, s firmware.Statement) error {
	sha := hex.EncodeToString(s.ImageSHA256[:])
	if o.SHA256 != sha {
		return fmt.Errorf("offer does not match its statement: the offer names image %q, the statement %s", o.SHA256, sha)
	}
	if o.Size != 0 && o.Size != s.ImageSize {
		return fmt.Errorf("offer does not match its statement: the offer says %d bytes, the statement %d", o.Size, s.ImageSize)
	}
	if o.Version != "" {
		v, err := firmware.ParseVersion(o.Version)
		if err != nil || v != s.Version {
			return fmt.Errorf("offer does not match its statement: the offer says version %q, the statement %s", o.Version, s.Version)
		}
	}
	return nil
}

// fail reports an update's failure (kind OTARefused or StateFailed) and
// returns it.
func (a *Agent) fail(ctx context.Context, rel otaRelease, kind string, reason error) error {
	a.log.Warn("update failed", "rollout", rel.rollout, "sha256", rel.sha, "refused", kind == OTARefused, "reason", reason)
	a.emit(OTAEvent{State: kind, Rollout: rel.rollout, SHA256: rel.sha, Version: rel.version, Size: rel.size, Err: reason})
	rep := a.releaseReport(otaproto.StateFailed, rel)
	rep.Reason = reason.Error()
	a.report(ctx, rep)
	return fmt.Errorf("device: ota: rollout %q: %w", rel.rollout, reason)
}

// releaseReport is a report about the release being updated to.
func (a *Agent) releaseReport(state string, rel otaRelease) otaproto.Report {
	st := a.snapshot()
	return otaproto.Report{State: state, Rollout: rel.rollout, SHA256: rel.sha, SecurityCounter: st.SecurityCounter}
}

// report sends a status report and logs a failure: Warden learns the
// outcome from the next report at the latest.
func (a *Agent) report(ctx context.Context, rep otaproto.Report) {
	if err := a.sendReport(ctx, rep); err != nil && ctx.Err() == nil {
		a.log.Warn("OTA status report not delivered", "state", rep.State, "rollout", rep.Rollout, "reason", err)
	}
}

// sendReport sends one report within otaReportTimeout.
func (a *Agent) sendReport(ctx context.Context, rep otaproto.Report) error {
	ctx, cancel := context.WithTimeout(ctx, otaReportTimeout)
	defer cancel()
	if a.cfg.transport == OTATransportMQTT {
		return a.publishReport(ctx, rep)
	}
	o, err := a.postStatus(ctx, rep)
	if err != nil {
		return err
	}
	if o != nil {
		if err := a.take(a.life, *o, false); err != nil && !errors.Is(err, ErrClosed) {
			a.log.Warn("OTA offer not taken", "reason", err)
		}
	}
	return nil
}

func (a *Agent) publishReport(ctx context.Context, rep otaproto.Report) error {
	rep.Reason = truncateReason(rep.Reason)
	b, err := json.Marshal(rep)
	if err != nil {
		return fmt.Errorf("encode the %s report: %w", rep.State, err)
	}
	return a.publishOTA(ctx, otaproto.TopicStatus, b)
}

// publishOTA publishes on private/<id>/ota/<channel> at QoS 1, sealed for
// that topic if the device seals its uplinks.
func (a *Agent) publishOTA(ctx context.Context, channel string, payload []byte) error {
	topic := otaproto.Topic(a.c.s.id, channel)
	payload, err := a.sealFor(topic, payload)
	if err != nil {
		return err
	}
	return a.c.Publish(ctx, topic, payload, 1, false)
}

// sealFor seals payload for topic when the device seals its uplinks (an
// envelope device on plain servers, or with Envelope.Required), as
// Warden's OTA endpoints then expect.
func (a *Agent) sealFor(topic string, payload []byte) ([]byte, error) {
	if !a.seal {
		return payload, nil
	}
	if a.c.life.Err() != nil {
		return nil, ErrClosed
	}
	b, err := a.c.env.seal(topic, payload)
	if err != nil {
		return nil, fmt.Errorf("seal for %q: %w", topic, err)
	}
	return b, nil
}

// truncateReason cuts a failure reason to otaproto.MaxReasonLength bytes
// without splitting a UTF-8 sequence.
func truncateReason(s string) string {
	if len(s) <= otaproto.MaxReasonLength {
		return s
	}
	s = s[:otaproto.MaxReasonLength]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// progress reports "downloading" at the start and then every quarter of
// the image, rather than for every block.
type progress struct {
	a       *Agent
	ctx     context.Context
	rel     otaRelease
	quarter int64 // the last quarter reported
	step    int64 // bytes per quarter
}

func (a *Agent) newProgress(ctx context.Context, rel otaRelease, off int64) *progress {
	p := &progress{a: a, ctx: ctx, rel: rel, step: max(rel.size/4, 1)}
	p.quarter = off / p.step
	p.send(off)
	return p
}

func (p *progress) at(off int64) {
	if q := off / p.step; q > p.quarter && off < p.rel.size {
		p.quarter = q
		p.send(off)
	}
}

func (p *progress) send(off int64) {
	p.a.log.Debug("downloading", "rollout", p.rel.rollout, "offset", off, "bytes", p.rel.size)
	p.a.emit(OTAEvent{State: otaproto.StateDownloading, Rollout: p.rel.rollout, SHA256: p.rel.sha, Version: p.rel.version, Offset: off, Size: p.rel.size})
	rep := p.a.releaseReport(otaproto.StateDownloading, p.rel)
	rep.Offset = off
	p.a.report(p.ctx, rep)
}

// fetchAndMatch downloads the image into the store's partial download
// (resuming what is there) and ties it to the statement. A resumed
// download that does not match is fetched once more from the start: its
// first part may not have survived a power loss. An image that does not
// match is deleted.
func (a *Agent) fetchAndMatch(ctx context.Context, j *otaJob, o otaproto.Offer, s firmware.Statement, rel otaRelease) (*firmware.Image, []byte, error) {
	dl, err := a.cfg.store.OpenDownload(rel.sha)
	if err != nil {
		return nil, nil, fmt.Errorf("download: %w", err)
	}
	open := true
	defer func() {
		if open {
			_ = dl.Close()
		}
	}()
	if dl.Size() > s.ImageSize {
		if err := dl.Truncate(0); err != nil {
			return nil, nil, fmt.Errorf("download: %w", err)
		}
	}
	resumed := dl.Size() > 0
	if resumed {
		a.log.Info("resuming the download", "rollout", rel.rollout, "offset", dl.Size(), "bytes", s.ImageSize)
	}
	for {
		if dl.Size() < s.ImageSize {
			if a.cfg.transport == OTATransportMQTT {
				err = a.fetchMQTT(ctx, dl, rel)
			} else {
				err = a.fetchHTTPS(ctx, j, o, dl, rel)
			}
			if err != nil {
				return nil, nil, fmt.Errorf("download: %w", err)
			}
			if err := dl.Sync(); err != nil {
				return nil, nil, fmt.Errorf("download: %w", err)
			}
		}
		file, err := dl.Bytes()
		if err != nil {
			return nil, nil, fmt.Errorf("download: %w", err)
		}
		img, err := s.MatchImage(file, a.cfg.key)
		if err == nil {
			return img, file, nil
		}
		if resumed && errors.Is(err, firmware.ErrDigest) {
			resumed = false
			a.log.Warn("the resumed download does not match its statement; downloading it again from the start", "rollout", rel.rollout, "reason", err)
			if err := dl.Truncate(0); err != nil {
				return nil, nil, fmt.Errorf("download: %w", err)
			}
			continue
		}
		open = false
		_ = dl.Close()
		if rerr := a.cfg.store.RemoveDownload(); rerr != nil {
			a.log.Warn("could not remove the rejected download", "reason", rerr)
		}
		return nil, nil, fmt.Errorf("image: %w", err)
	}
}

// errBlockTimeout: no answer to a block request in time.
var errBlockTimeout = errors.New("no block in time")

// fetchMQTT requests the image block by block from dl's end, one request
// at a time. A block that does not come in time is asked for again;
// Retries unanswered requests in a row fail the download.
func (a *Agent) fetchMQTT(ctx context.Context, dl OTADownload, rel otaRelease) error {
	for drained := false; !drained; {
		select {
		case <-a.blocks: // a late block of an earlier download
		default:
			drained = true
		}
	}
	prog := a.newProgress(ctx, rel, dl.Size())
	misses := 0
	for off := dl.Size(); off < rel.size; {
		n := min(int64(a.cfg.blockSize), rel.size-off)
		req, err := json.Marshal(otaproto.BlockRequest{SHA256: rel.sha, Offset: off, Length: int(n)})
		if err != nil {
			return err
		}
		// Waiting for a connection is not a miss: the client reconnects
		// by itself, and the download goes on when it is back.
		if err := a.c.awaitConnection(ctx); err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, a.cfg.blockTimeout)
		err = a.publishOTA(rctx, otaproto.TopicGet, req)
		cancel()
		var data []byte
		var refused *RefusedError
		switch {
		case errors.As(err, &refused):
			return fmt.Errorf("Warden refused the block request at offset %d (has the rollout ended?): %w", off, err)
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			a.log.Debug("block request not sent", "offset", off, "reason", err)
		default:
			data, err = a.awaitBlock(ctx, off, n, rel.size)
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		if err != nil {
			misses++
			if misses > a.cfg.retries {
				return fmt.Errorf("no block at offset %d after %d requests, %v apart: %w", off, misses, a.cfg.blockTimeout, err)
			}
			a.log.Debug("asking for the block again", "offset", off, "attempt", misses+1, "reason", err)
			continue
		}
		misses = 0
		if _, err := dl.Write(data); err != nil {
			return fmt.Errorf("store the block at offset %d: %w", off, err)
		}
		off += n
		prog.at(off)
	}
	return nil
}

// awaitBlock waits for the block of n bytes at off. Blocks for other
// offsets (late answers to earlier requests) or of another size of image
// are skipped.
func (a *Agent) awaitBlock(ctx context.Context, off, n, size int64) ([]byte, error) {
	t := time.NewTimer(a.cfg.blockTimeout)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, errBlockTimeout
		case frame := <-a.blocks:
			bo, total, data, err := otaproto.ParseBlock(frame)
			switch {
			case err != nil:
				a.log.Debug("malformed OTA block skipped", "reason", err)
			case total != size:
				a.log.Debug("OTA block of another image skipped", "image_bytes", total, "want", size)
			case bo != off || int64(len(data)) != n:
				a.log.Debug("OTA block out of turn skipped", "offset", bo, "bytes", len(data), "want_offset", off)
			default:
				return data, nil
			}
		}
	}
}

// permanentError is a download failure that asking again will not cure.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanentf(format string, args ...any) error {
	return &permanentError{fmt.Errorf(format, args...)}
}

// errURLRefused: the image URL was answered with 403, typically because its
// capability expired.
var errURLRefused = errors.New("the image URL was refused (403 Forbidden)")

// fetchHTTPS downloads the rest of the image from the offer's URL. A
// dropped or stalled transfer resumes with a Range request; an expired URL
// is replaced once through a fresh check.
func (a *Agent) fetchHTTPS(ctx context.Context, j *otaJob, o otaproto.Offer, dl OTADownload, rel otaRelease) error {
	u := o.URL
	prog := a.newProgress(ctx, rel, dl.Size())
	rechecked := false
	misses := 0
	for dl.Size() < rel.size {
		select {
		case newer := <-j.offers:
			if newer.URL != "" {
				u = newer.URL
			}
		default:
		}
		before := dl.Size()
		err := a.getImage(ctx, u, dl, rel, prog)
		switch {
		case err == nil:
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, errURLRefused):
			if rechecked {
				return fmt.Errorf("%w again after a fresh check", errURLRefused)
			}
			rechecked = true
			a.log.Info("the image URL was refused; checking for a fresh one", "rollout", rel.rollout)
			fresh, cerr := a.checkHTTP(ctx)
			if cerr != nil {
				return fmt.Errorf("%w, and the fresh check failed: %w", errURLRefused, cerr)
			}
			if fresh == nil || fresh.SHA256 != rel.sha {
				return fmt.Errorf("%w, and Warden no longer offers the image", errURLRefused)
			}
			u = fresh.URL
			continue
		}
		var perm *permanentError
		if errors.As(err, &perm) {
			return err
		}
		if dl.Size() > before {
			misses = 0
		} else {
			misses++
		}
		if misses > a.cfg.retries {
			return fmt.Errorf("no progress after %d attempts: %w", misses, err)
		}
		d := Backoff(a.cfg.blockTimeout/10, a.cfg.blockTimeout, misses, nil)
		a.log.Info("image transfer interrupted; resuming", "rollout", rel.rollout, "offset", dl.Size(), "in", d, "reason", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// getImage makes one GET for the rest of the image and appends what it
// gets to dl, never more than the statement's size.
func (a *Agent) getImage(ctx context.Context, rawURL string, dl OTADownload, rel otaRelease, prog *progress) error {
	if rawURL == "" {
		return permanentf("the offer has no download URL (Warden's HTTPS delivery is off?)")
	}
	u, err := url.Parse(rawURL)
	if err != nil || !strings.EqualFold(u.Scheme, "https") || u.Host == "" {
		return permanentf("the offer's download URL is not an https:// URL")
	}
	off := dl.Size()

	// A watchdog ends a transfer that stalls, so that it resumes on a
	// fresh connection instead of hanging.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stalled atomic.Bool
	watchdog := time.AfterFunc(a.cfg.blockTimeout+a.c.s.connectTimeout, func() { stalled.Store(true); cancel() })
	defer watchdog.Stop()

	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return permanentf("the offer's download URL: %w", err)
	}
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
		// If the file behind the URL changed, the server sends all of it
		// rather than a range of something else.
		req.Header.Set("If-Range", `"`+rel.sha+`"`)
	}
	resp, err := a.cfg.http.Do(req)
	if err != nil {
		if stalled.Load() {
			return fmt.Errorf("no answer within %v", a.cfg.blockTimeout+a.c.s.connectTimeout)
		}
		return fmt.Errorf("GET the image: %w", redactURLError(err))
	}
	defer resp.Body.Close()

	var want int64
	switch resp.StatusCode {
	case http.StatusPartialContent:
		start, _, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		switch {
		case err != nil:
			return permanentf("the image server's answer: %w", err)
		case total != rel.size:
			return permanentf("the image server says the image is %d bytes, the statement %d", total, rel.size)
		case start != off:
			return permanentf("the image server sent bytes from %d, asked from %d", start, off)
		}
		want = rel.size - off
	case http.StatusOK:
		if off > 0 {
			a.log.Info("the image server sent the whole image; restarting the download", "rollout", rel.rollout)
			if err := dl.Truncate(0); err != nil {
				return err
			}
		}
		if resp.ContentLength >= 0 && resp.ContentLength != rel.size {
			return permanentf("the image server sends %d bytes, the statement says %d", resp.ContentLength, rel.size)
		}
		want = rel.size
	case http.StatusRequestedRangeNotSatisfiable:
		// The server's file is not what the partial download was taken
		// from: start over.
		if err := dl.Truncate(0); err != nil {
			return err
		}
		return errors.New("the image server cannot send from where the partial download ends; starting over")
	case http.StatusForbidden:
		return errURLRefused
	default:
		err := fmt.Errorf("the image server answered %s", resp.Status)
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			return err
		}
		return &permanentError{err}
	}

	buf := make([]byte, otaCopyBuffer)
	body := io.LimitReader(resp.Body, want)
	var got int64
	for got < want {
		n, err := body.Read(buf)
		if n > 0 {
			// Storing and reporting are not the server's time.
			watchdog.Stop()
			if _, werr := dl.Write(buf[:n]); werr != nil {
				return &permanentError{fmt.Errorf("store the image: %w", werr)}
			}
			got += int64(n)
			prog.at(dl.Size())
			watchdog.Reset(a.cfg.blockTimeout)
		}
		if err != nil {
			if stalled.Load() {
				return fmt.Errorf("no data for %v at offset %d", a.cfg.blockTimeout, dl.Size())
			}
			if errors.Is(err, io.EOF) && got < want {
				err = io.ErrUnexpectedEOF
			}
			if got < want {
				return fmt.Errorf("the transfer ended at offset %d of %d: %w", dl.Size(), rel.size, err)
			}
		}
	}
	return nil
}

// redactURLError keeps a download URL's capability out of logs and
// reports.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// parseContentRange parses a 206 answer's "bytes first-last/complete"
// (RFC 9110 §14.4), with a known complete length.
func parseContentRange(s string) (first, last, complete int64, err error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, 0, fmt.Errorf("Content-Range %q is not a byte range", s)
	}
	rng, total, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, fmt.Errorf("Content-Range %q has no complete length", s)
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, fmt.Errorf("Content-Range %q has no range", s)
	}
	if first, err = parseDigits(a); err == nil {
		if last, err = parseDigits(b); err == nil {
			complete, err = parseDigits(total)
		}
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("Content-Range %q: %w", s, err)
	}
	if first > last || last >= complete {
		return 0, 0, 0, fmt.Errorf("Content-Range %q is not a range within the complete length", s)
	}
	return first, last, complete, nil
}

// parseDigits accepts decimal digits only: no sign, no spaces.
func parseDigits(s string) (int64, error) {
	if s == "" || len(s) > 18 {
		return 0, fmt.Errorf("%q is not a byte position", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%q is not a byte position", s)
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// checkHTTP asks Warden's HTTPS check endpoint for an offer; nil means
// none waits. An envelope device that seals its uplinks seals the query
// for the pseudo-topic private/<id>/ota/check.
func (a *Agent) checkHTTP(ctx context.Context) (*otaproto.Offer, error) {
	st := a.snapshot()
	id := a.c.s.id
	q := url.Values{
		"version":          {st.Version.String()},
		"security_counter": {strconv.FormatUint(uint64(st.SecurityCounter), 10)},
		"sequence":         {strconv.FormatUint(st.Sequence, 10)},
	}
	if a.seal {
		sealed, err := a.sealFor(otaproto.Topic(id, otaCheckChannel), []byte(q.Encode()))
		if err != nil {
			return nil, err
		}
		q = url.Values{"device": {id}, "sealed": {base64.RawURLEncoding.EncodeToString(sealed)}}
	} else {
		q.Set("device", id)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.cfg.base+otaproto.PathCheck+"?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	return a.doOffer(req, "check")
}

// postStatus posts a report to Warden's HTTPS status endpoint, sealed for
// private/<id>/ota/status if the device seals its uplinks. Warden may
// answer with an offer.
func (a *Agent) postStatus(ctx context.Context, rep otaproto.Report) (*otaproto.Offer, error) {
	rep.Reason = truncateReason(rep.Reason)
	body, err := json.Marshal(rep)
	if err != nil {
		return nil, fmt.Errorf("encode the %s report: %w", rep.State, err)
	}
	id := a.c.s.id
	target, ctype := a.cfg.base+otaproto.PathStatus, "application/json"
	if a.seal {
		if body, err = a.sealFor(otaproto.Topic(id, otaproto.TopicStatus), body); err != nil {
			return nil, err
		}
		target += "?" + url.Values{"device": {id}}.Encode()
		ctype = otaEnvelopeContentType
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	req.Header.Set("Content-Type", ctype)
	return a.doOffer(req, "status")
}

// doOffer sends a check or status request: 204 is no offer, 200 an offer.
func (a *Agent) doOffer(req *http.Request, what string) (*otaproto.Offer, error) {
	resp, err := a.cfg.http.Do(req)
	if err != nil {
		err = redactURLError(err)
		var ve *tls.CertificateVerificationError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%s at %s: the server's certificate was refused (it must chain to the pinned Warden root and be valid for the host name): %w", what, a.cfg.base, err)
		}
		return nil, fmt.Errorf("%s at %s: %w", what, a.cfg.base, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil, nil
	case http.StatusOK:
	case http.StatusForbidden:
		return nil, fmt.Errorf("%s: Warden refused the request (403): is the device registered and active, and are its certificate or envelope keys current?", what)
	case http.StatusConflict:
		return nil, fmt.Errorf("%s: Warden refused the report (409): it is out of order, or about a rollout the device is no longer in", what)
	default:
		return nil, fmt.Errorf("%s: Warden answered %s", what, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxOTAResponse+1))
	if err != nil {
		return nil, fmt.Errorf("%s: read the offer: %w", what, err)
	}
	if len(b) > maxOTAResponse {
		return nil, fmt.Errorf("%s: the offer is larger than %d bytes", what, maxOTAResponse)
	}
	var o otaproto.Offer
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("%s: the answer is not an offer: %w", what, err)
	}
	return &o, nil
}
