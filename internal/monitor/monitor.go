// Package monitor is Warden's anomaly monitor: detectors over what the
// broker, the relay and the firmware service report devices do
// (internal/events), the alerts they raise, and the responses taken
// (disconnect, quarantine). docs/monitoring.md describes every detector,
// its thresholds and its false positives.
//
// Observe runs on the producers' goroutines, a connection's read loop for
// every publish, so it only updates per-device counters in sharded maps:
// it takes O(1) time, never blocks and does not allocate on the publish
// path. A detector that fires queues a finding (a bounded queue; findings
// beyond it are dropped and counted); Run's worker formats, de-duplicates
// and stores alerts, audits them, counts them, takes the configured
// response and hands them to the webhook sender. Run also does the
// periodic checks: silence, certificate expiry, forgetting idle state,
// picking up quarantines released from the command line, and retention.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/events"
	"github.com/warden-iot/warden/internal/store"
)

// Config is the monitor's configuration: the monitor section of Warden's
// configuration (config.Monitor, with its defaults in
// config.DefaultMonitor and its documentation in warden.example.yaml).
type Config = config.Monitor

// Alert is a stored alert.
type Alert = store.Alert

// AlertStore is what the monitor keeps in the database: alerts and the
// quarantined devices. store.Store implements it.
type AlertStore interface {
	CreateAlert(ctx context.Context, a store.Alert) error
	GetAlert(ctx context.Context, id string) (store.Alert, error)
	UpdateAlert(ctx context.Context, id string, add int, lastSeen time.Time) (store.Alert, error)
	ListAlerts(ctx context.Context, f store.AlertFilter) ([]store.Alert, error)
	AcknowledgeAlert(ctx context.Context, id, by string, at time.Time) (store.Alert, error)
	PurgeAlerts(ctx context.Context, before time.Time) (int, error)
	SetQuarantine(ctx context.Context, q store.Quarantine) error
	ClearQuarantine(ctx context.Context, deviceID string) (store.Quarantine, error)
	ListQuarantines(ctx context.Context) ([]store.Quarantine, error)
}

// CertSource lists the credentials the certificate expiry scan looks at.
// store.Store implements it.
type CertSource interface {
	ExpiringCredentials(ctx context.Context, f store.ExpiryFilter) ([]store.ExpiringCredential, error)
}

// FirmwarePolicy says which firmware versions a model may run.
type FirmwarePolicy interface {
	// AllowedVersions returns the versions allowed for model; known is
	// false when Warden has no policy for the model (nothing is reported).
	AllowedVersions(ctx context.Context, model string) (versions []string, known bool, err error)
}

// Responder acts on the broker. Quarantine restricts a device to its OTA
// and certificate topics (and cuts its live connection so that it comes
// back restricted); Release lifts that. The monitor calls Quarantine also
// for the devices found quarantined in the store when it starts, and
// keeps the durable state itself: IsQuarantined answers from it.
type Responder interface {
	Disconnect(ctx context.Context, deviceID, reason string)
	Quarantine(ctx context.Context, deviceID, reason string) error
	Release(ctx context.Context, deviceID string) error
}

// Options configure a Monitor.
type Options struct {
	Store  AlertStore       // required
	Clock  func() time.Time // nil: time.Now
	Config Config
	// Responder takes responses; nil: alert only (every alert records the
	// response "none").
	Responder Responder
	Webhook   *Webhook // nil: no webhook
	Audit     audit.Recorder
	Logger    *slog.Logger
	// Registerer receives the metrics; nil: they are kept but not exported.
	Registerer prometheus.Registerer
	// Certificates feeds the certificate expiry detector; nil turns it off.
	Certificates CertSource
	// Firmware feeds the firmware detector; nil turns it off.
	Firmware FirmwarePolicy
}

// Monitor is the anomaly monitor. It is an events.Sink.
type Monitor struct {
	cfg       Config
	st        AlertStore
	clock     func() time.Time
	responder Responder
	webhook   *Webhook
	audit     audit.Recorder
	log       *slog.Logger
	certs     CertSource
	firmware  FirmwarePolicy
	p         params

	devices  *table[deviceState]
	claims   *table[subjectState] // claimed device IDs: authentication and envelope failures
	sources  *table[subjectState] // source hosts
	services *table[subjectState]

	queue chan task
	hooks chan store.Alert

	qmu         sync.RWMutex
	quarantined map[string]struct{}

	running atomic.Bool

	// The worker's own state: only Run's goroutine touches it.
	recent      map[string]recentAlert // detector + subject -> the alert raised last
	certAlerted map[string]bool        // serials alerted in this process
	lastPurge   time.Time

	metrics metrics
}

// recentAlert is the alert a repeat within the cool-down is counted into.
type recentAlert struct {
	id string
	at time.Time
}

// params are the configuration in the units Observe works in.
type params struct {
	authW, sourceW, tagW, replayW, aclW, flapW, cloneW int64 // windows, ns
	rateIV                                             int64 // publish-rate interval, ns
	rateAlpha, sizeAlpha                               float64
	heartbeats                                         map[string]time.Duration
}

type metrics struct {
	alerts         *prometheus.CounterVec
	dropped        prometheus.Counter
	webhookFails   prometheus.Counter
	untracked      *prometheus.CounterVec
	untrackedByTbl [4]prometheus.Counter // devices, claims, sources, services
	quarantined    prometheus.GaugeFunc
	tracked        *prometheus.GaugeVec
}

// Table indexes for the untracked counter.
const (
	tblDevices = iota
	tblClaims
	tblSources
	tblServices
)

// New builds a Monitor and loads the quarantined devices from the store,
// so that IsQuarantined is right before the broker accepts a connection.
func New(ctx context.Context, o Options) (*Monitor, error) {
	if o.Store == nil {
		return nil, errors.New("monitor: a store is required")
	}
	if err := o.Config.Validate(); err != nil {
		return nil, fmt.Errorf("monitor: invalid configuration: %w", err)
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Audit == nil {
		o.Audit = audit.Discard{Logger: o.Logger}
	}
	c := o.Config
	m := &Monitor{
		cfg: c, st: o.Store, clock: o.Clock, responder: o.Responder, webhook: o.Webhook, audit: o.Audit,
		log: o.Logger, certs: o.Certificates, firmware: o.Firmware,
		devices:     newTable[deviceState](c.MaxDevices),
		claims:      newTable[subjectState](c.MaxSources),
		sources:     newTable[subjectState](c.MaxSources),
		services:    newTable[subjectState](c.MaxSources),
		queue:       make(chan task, c.QueueSize),
		quarantined: map[string]struct{}{},
		recent:      map[string]recentAlert{},
		certAlerted: map[string]bool{},
		p: params{
			authW: int64(c.AuthFailures.Window), sourceW: int64(c.AuthFailuresSource.Window),
			tagW: int64(c.EnvelopeTagFailures.Window), replayW: int64(c.EnvelopeReplays.Window),
			aclW: int64(c.ACLDenials.Window), flapW: int64(c.ConnectFlapping.Window), cloneW: int64(c.ClonedIdentity.Window),
			rateIV: int64(c.PublishRate.Interval),
			// The usual N-period smoothing: the last warm-up's worth of
			// samples carries most of the weight.
			rateAlpha:  2 / (float64(c.PublishRate.Warmup) + 1),
			sizeAlpha:  2 / (float64(c.PayloadSize.Warmup) + 1),
			heartbeats: make(map[string]time.Duration, len(c.Silence.Models)),
		},
	}
	for _, mh := range c.Silence.Models {
		m.p.heartbeats[mh.Model] = mh.Heartbeat
	}
	if o.Webhook != nil {
		if err := o.Webhook.check(); err != nil {
			return nil, err
		}
		// A copy, so that the caller's value is not changed, with a
		// client kept for every delivery (its connections reused).
		w := *o.Webhook
		if w.Client == nil {
			w.Client = newClient(defaultWebhookTimeout)
		}
		m.webhook = &w
		m.hooks = make(chan store.Alert, webhookQueue)
	}
	m.initMetrics()
	if o.Registerer != nil {
		for _, col := range []prometheus.Collector{m.metrics.alerts, m.metrics.dropped, m.metrics.webhookFails,
			m.metrics.untracked, m.metrics.quarantined, m.metrics.tracked} {
			if err := o.Registerer.Register(col); err != nil {
				return nil, fmt.Errorf("monitor: register metrics: %w", err)
			}
		}
	}
	qs, err := m.st.ListQuarantines(ctx)
	if err != nil {
		return nil, fmt.Errorf("monitor: load quarantined devices: %w", err)
	}
	for _, q := range qs {
		m.quarantined[q.DeviceID] = struct{}{}
	}
	if m.responder != nil && c.Enabled {
		for _, q := range qs {
			if err := m.responder.Quarantine(ctx, q.DeviceID, q.Reason); err != nil {
				m.log.Error("monitor: cannot restore the quarantine of a device on the broker; it stays quarantined in the store",
					"device", q.DeviceID, "error", err)
			}
		}
	}
	if len(qs) > 0 {
		m.log.Info("monitor: quarantined devices restored", "count", len(qs))
	}
	return m, nil
}

func (m *Monitor) initMetrics() {
	m.metrics.alerts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warden_alerts_total", Help: "Alerts raised by the anomaly monitor (repeats within the cool-down not counted), by detector and severity.",
	}, []string{"detector", "severity"})
	m.metrics.dropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "warden_monitor_dropped_total", Help: "Findings dropped because the monitor's queue was full.",
	})
	m.metrics.webhookFails = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "warden_webhook_failures_total", Help: "Alerts the webhook could not deliver (every attempt failed, or its queue was full).",
	})
	m.metrics.untracked = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "warden_monitor_untracked_total", Help: "Events about a subject the monitor did not track because its table was full, by table.",
	}, []string{"table"})
	for i, name := range []string{"devices", "claims", "sources", "services"} {
		m.metrics.untrackedByTbl[i] = m.metrics.untracked.WithLabelValues(name)
	}
	m.metrics.quarantined = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "warden_monitor_quarantined", Help: "Devices in quarantine.",
	}, func() float64 {
		m.qmu.RLock()
		defer m.qmu.RUnlock()
		return float64(len(m.quarantined))
	})
	m.metrics.tracked = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "warden_monitor_tracked", Help: "Subjects whose state the monitor keeps, by table.",
	}, []string{"table"})
}

// Enabled reports whether the monitor runs (monitor.enabled).
func (m *Monitor) Enabled() bool { return m.cfg.Enabled }

// IsQuarantined reports whether a device is quarantined. It is an O(1)
// in-memory check, for the broker's policy on every connect.
func (m *Monitor) IsQuarantined(deviceID string) bool {
	if !m.cfg.Enabled {
		return false
	}
	m.qmu.RLock()
	_, ok := m.quarantined[deviceID]
	m.qmu.RUnlock()
	return ok
}

// Raise queues an alert found outside the built-in detectors. Like
// Observe it never blocks: beyond the queue the finding is dropped and
// counted.
func (m *Monitor) Raise(f Finding) {
	if !m.cfg.Enabled {
		return
	}
	m.enqueue(task{kind: taskRaise, detector: f.Detector, at: m.clock(), device: f.Device, service: f.Service, remote: f.Remote, ext: &f})
}

// enqueue hands a task to the worker without ever waiting.
func (m *Monitor) enqueue(t task) {
	select {
	case m.queue <- t:
	default:
		m.metrics.dropped.Inc()
	}
}

// Observe implements events.Sink. It runs on the producer's goroutine:
// O(1), never blocking, and without allocation for Published.
func (m *Monitor) Observe(e events.Event) {
	if !m.cfg.Enabled {
		return
	}
	at := e.At
	if at.IsZero() {
		at = m.clock()
	}
	switch e.Kind {
	case events.Published:
		m.published(&e, at)
	case events.Connected:
		m.connected(&e, at)
	case events.Disconnected:
		m.touch(&e, at)
	case events.ACLDenied:
		m.aclDenied(&e, at)
	case events.AuthFailed:
		m.authFailed(&e, at)
	case events.EnvelopeRejected:
		m.envelopeRejected(&e, at)
	case events.FirmwareReported:
		m.firmwareReported(&e, at)
	}
}

func (m *Monitor) published(e *events.Event, at time.Time) {
	if e.Device == "" {
		return
	}
	now := at.UnixNano()
	sh := m.devices.shard(e.Device)
	sh.mu.Lock()
	d := m.devices.lookup(sh, e.Device)
	if d == nil {
		sh.mu.Unlock()
		m.metrics.untrackedByTbl[tblDevices].Inc()
		return
	}
	d.lastSeen, d.lastAny, d.silenceReported = now, now, false
	d.counts.Messages++
	d.counts.Bytes += uint64(max(e.Size, 0))

	var found task
	bucket := now / m.p.rateIV
	if r := m.cfg.PublishRate; r.Enabled {
		if bucket > d.bucket {
			// The interval ended: learn its count (capped, so that a
			// flood does not become the baseline at once).
			if d.bucketCount > 0 {
				x := float64(d.bucketCount)
				if d.rate.n >= int64(r.Warmup) {
					x = min(x, r.Factor*d.rate.mean)
				}
				d.rate.add(x, m.p.rateAlpha, int64(r.Warmup))
			}
			d.bucket, d.bucketCount, d.bucketReported = bucket, 0, false
		}
		d.bucketCount++
		if !d.bucketReported && d.rate.n >= int64(r.Warmup) && d.bucketCount > int64(r.Floor) &&
			float64(d.bucketCount) > r.Factor*d.rate.mean {
			d.bucketReported = true
			found = task{kind: taskFinding, detector: DetectorPublishRate, at: at, device: e.Device, topic: e.Topic,
				n: d.bucketCount, x: d.rate.mean, d: r.Interval}
		}
	}
	if s := m.cfg.PayloadSize; s.Enabled {
		x := float64(e.Size)
		if d.size.n >= int64(s.Warmup) && e.Size > int(s.Floor) && x > s.Factor*d.size.mean {
			if d.sizeReported != bucket && found.kind == 0 {
				d.sizeReported = bucket
				found = task{kind: taskFinding, detector: DetectorPayloadSize, at: at, device: e.Device, topic: e.Topic,
					n: int64(e.Size), x: d.size.mean}
			}
			x = s.Factor * d.size.mean
		}
		d.size.add(x, m.p.sizeAlpha, int64(s.Warmup))
	}
	sh.mu.Unlock()
	if found.kind != 0 {
		m.enqueue(found)
	}
}

func (m *Monitor) connected(e *events.Event, at time.Time) {
	if e.Device == "" {
		return
	}
	now := at.UnixNano()
	sh := m.devices.shard(e.Device)
	sh.mu.Lock()
	d := m.devices.lookup(sh, e.Device)
	if d == nil {
		sh.mu.Unlock()
		m.metrics.untrackedByTbl[tblDevices].Inc()
		return
	}
	d.lastSeen, d.lastAny, d.silenceReported = now, now, false
	d.counts.Connects++
	var flap, clone task
	if f := m.cfg.ConnectFlapping; f.Enabled {
		if est := d.connects.add(now, m.p.flapW); est >= float64(f.Threshold) {
			d.connects.reset()
			flap = task{kind: taskFinding, detector: DetectorConnectFlapping, at: at, device: e.Device, remote: e.Remote, n: int64(est), d: f.Window}
		}
	}
	if host := hostOf(e.Remote); host != "" {
		if c := m.cfg.ClonedIdentity; c.Enabled && d.lastHost != "" && host != d.lastHost {
			if est := d.switches.add(now, m.p.cloneW); est >= float64(c.Switches) {
				d.switches.reset()
				clone = task{kind: taskFinding, detector: DetectorClonedIdentity, at: at, device: e.Device, remote: host,
					host2: d.lastHost, n: int64(est), d: c.Window}
			}
		}
		d.lastHost = host
	}
	sh.mu.Unlock()
	if flap.kind != 0 {
		m.enqueue(flap)
	}
	if clone.kind != 0 {
		m.enqueue(clone)
	}
}

// touch notes activity that does not count as being heard from (a
// disconnect), so that the device's state is not forgotten meanwhile.
func (m *Monitor) touch(e *events.Event, at time.Time) {
	if e.Device == "" {
		return
	}
	sh := m.devices.shard(e.Device)
	sh.mu.Lock()
	if d := sh.m[e.Device]; d != nil {
		d.lastAny = at.UnixNano()
	}
	sh.mu.Unlock()
}

func (m *Monitor) aclDenied(e *events.Event, at time.Time) {
	a := m.cfg.ACLDenials
	now := at.UnixNano()
	var est float64
	switch {
	case e.Device != "":
		sh := m.devices.shard(e.Device)
		sh.mu.Lock()
		d := m.devices.lookup(sh, e.Device)
		if d == nil {
			sh.mu.Unlock()
			m.metrics.untrackedByTbl[tblDevices].Inc()
			return
		}
		d.lastAny = now
		d.counts.ACLDenials++ // counted for the operator whether or not the detector runs
		if !a.Enabled {
			sh.mu.Unlock()
			return
		}
		if est = d.acl.add(now, m.p.aclW); est >= float64(a.Threshold) {
			d.acl.reset()
		}
		sh.mu.Unlock()
	case e.Service != "" && a.Enabled:
		s, ok := m.subject(m.services, tblServices, e.Service, now)
		if !ok {
			return
		}
		est = s.count(&s.st.acl, now, m.p.aclW, a.Threshold)
		s.unlock()
	default:
		return
	}
	if est >= float64(a.Threshold) {
		m.enqueue(task{kind: taskFinding, detector: DetectorACLDenials, at: at, device: e.Device, service: e.Service,
			remote: e.Remote, topic: e.Topic, reason: e.Reason, n: int64(est), d: a.Window})
	}
}

func (m *Monitor) authFailed(e *events.Event, at time.Time) {
	now := at.UnixNano()
	if a := m.cfg.AuthFailures; a.Enabled && (e.Device != "" || e.Service != "") {
		tbl, idx, id := m.claims, tblClaims, e.Device
		if id == "" {
			tbl, idx, id = m.services, tblServices, e.Service
		}
		if s, ok := m.subject(tbl, idx, id, now); ok {
			est := s.count(&s.st.auth, now, m.p.authW, a.Threshold)
			s.unlock()
			if est >= float64(a.Threshold) {
				m.enqueue(task{kind: taskFinding, detector: DetectorAuthFailures, at: at, device: e.Device, service: e.Service,
					remote: hostOf(e.Remote), reason: e.Reason, n: int64(est), d: a.Window})
			}
		}
	}
	if a := m.cfg.AuthFailuresSource; a.Enabled {
		host := hostOf(e.Remote)
		if host == "" {
			return
		}
		if s, ok := m.subject(m.sources, tblSources, host, now); ok {
			est := s.count(&s.st.auth, now, m.p.sourceW, a.Threshold)
			s.unlock()
			if est >= float64(a.Threshold) {
				m.enqueue(task{kind: taskFinding, detector: DetectorAuthFailuresSource, at: at, remote: host,
					reason: e.Reason, n: int64(est), d: a.Window})
			}
		}
	}
}

func (m *Monitor) envelopeRejected(e *events.Event, at time.Time) {
	if e.Device == "" {
		return
	}
	var (
		c        config.MonitorThresholdResponse
		detector string
		w        int64
	)
	switch e.Reason {
	case "bad-tag", "bad-padding", "downgrade":
		// Forged or tampered messages, or a suite downgrade: the envelope
		// package's reasons (events.EnvelopeRejected).
		c, detector, w = m.cfg.EnvelopeTagFailures, DetectorEnvelopeTagFailures, m.p.tagW
	case "replay":
		c, detector, w = m.cfg.EnvelopeReplays, DetectorEnvelopeReplays, m.p.replayW
	default:
		// "epoch" (a device behind a rekey) and "malformed" are faults,
		// not forgeries.
		return
	}
	if !c.Enabled {
		return
	}
	now := at.UnixNano()
	s, ok := m.subject(m.claims, tblClaims, e.Device, now)
	if !ok {
		return
	}
	win := &s.st.tag
	if detector == DetectorEnvelopeReplays {
		win = &s.st.replay
	}
	est := s.count(win, now, w, c.Threshold)
	s.unlock()
	if est >= float64(c.Threshold) {
		m.enqueue(task{kind: taskFinding, detector: detector, at: at, device: e.Device, remote: hostOf(e.Remote), n: int64(est), d: c.Window})
	}
}

func (m *Monitor) firmwareReported(e *events.Event, at time.Time) {
	if e.Device == "" {
		return
	}
	sh := m.devices.shard(e.Device)
	sh.mu.Lock()
	if d := m.devices.lookup(sh, e.Device); d != nil {
		d.lastAny = at.UnixNano()
		if d.model != e.Model {
			d.model = e.Model
		}
	}
	sh.mu.Unlock()
	if m.cfg.Firmware.Enabled && m.firmware != nil {
		m.enqueue(task{kind: taskFirmware, detector: DetectorFirmware, at: at, device: e.Device, remote: e.Remote, model: e.Model, version: e.Version})
	}
}

// lockedSubject is a subject's state with its shard locked.
type lockedSubject struct {
	st *subjectState
	sh *shard[subjectState]
}

func (s lockedSubject) unlock() { s.sh.mu.Unlock() }

// count adds an event to w and returns the estimate, resetting the window
// when it reaches the threshold.
func (s lockedSubject) count(w *window, now, width int64, threshold int) float64 {
	est := w.add(now, width)
	if est >= float64(threshold) {
		w.reset()
	}
	return est
}

// subject returns id's state in tbl, locked; false (and counted) if the
// table is full.
func (m *Monitor) subject(tbl *table[subjectState], idx int, id string, now int64) (lockedSubject, bool) {
	sh := tbl.shard(id)
	sh.mu.Lock()
	st := tbl.lookup(sh, id)
	if st == nil {
		sh.mu.Unlock()
		m.metrics.untrackedByTbl[idx].Inc()
		return lockedSubject{}, false
	}
	st.lastAny = now
	return lockedSubject{st: st, sh: sh}, true
}

// Activity counts what a device did while the monitor tracked it: since
// this process started, or since the monitor last forgot the device after
// monitor.forget_after without a word from it.
type Activity struct {
	Messages   uint64 `json:"messages"`    // uplink publishes
	Bytes      uint64 `json:"bytes"`       // their payload bytes
	Connects   uint64 `json:"connects"`    // sessions established
	ACLDenials uint64 `json:"acl_denials"` // publishes and subscriptions refused by its ACL
}

// LastSeen is when device id last connected or published, as far as this
// process has seen (it does not survive a restart); false if never.
func (m *Monitor) LastSeen(id string) (time.Time, bool) {
	sh := m.devices.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	d := sh.m[id]
	if d == nil || d.lastSeen == 0 {
		return time.Time{}, false
	}
	return time.Unix(0, d.lastSeen).UTC(), true
}

// Activity returns device id's counters; false if the monitor does not
// track it (never seen since the start, forgotten, or the monitor is off).
func (m *Monitor) Activity(id string) (Activity, bool) {
	sh := m.devices.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	d := sh.m[id]
	if d == nil {
		return Activity{}, false
	}
	return d.counts, true
}
