package monitor

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

// storeTimeout bounds one store operation of the worker, so that a stuck
// database delays alerts instead of stopping the monitor for good.
const storeTimeout = 10 * time.Second

// drainTimeout bounds how long Run keeps storing queued findings after
// its context ends.
const drainTimeout = 5 * time.Second

// purgeInterval spaces the retention purges.
const purgeInterval = 24 * time.Hour

// Run runs the worker (storing, de-duplicating and responding to
// findings), the webhook sender and the periodic checks until ctx ends,
// then stores what is still queued (for a few seconds at most) and
// returns nil. It must be called once.
func (m *Monitor) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("monitor: Run called twice")
	}
	if !m.cfg.Enabled {
		<-ctx.Done()
		return nil
	}
	var wg sync.WaitGroup
	if m.webhook != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.sendWebhooks(ctx)
		}()
	}
	checks := time.NewTicker(m.cfg.CheckInterval)
	defer checks.Stop()
	certs := time.NewTicker(m.cfg.CertExpiry.Interval)
	defer certs.Stop()
	// A task taken from the queue is finished even if ctx ends meanwhile
	// (each store operation is bounded by storeTimeout): the loop, not
	// the context, decides when to stop.
	wctx := context.WithoutCancel(ctx)
	m.scanCertificates(ctx)
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(wctx, drainTimeout)
			m.drain(dctx)
			cancel()
			wg.Wait()
			return nil
		case t := <-m.queue:
			m.handle(wctx, t)
		case <-checks.C:
			m.periodic(wctx)
		case <-certs.C:
			m.scanCertificates(ctx)
		}
	}
}

// drain handles every task queued now.
func (m *Monitor) drain(ctx context.Context) {
	for {
		select {
		case t := <-m.queue:
			m.handle(ctx, t)
		default:
			return
		}
	}
}

func (m *Monitor) sendWebhooks(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-m.hooks:
			// Signed with the wall clock, not the monitor's: the
			// timestamp protects the receiver against replays of the
			// request, whenever the alert was raised.
			if !m.webhook.deliver(ctx, a, time.Now, m.log) {
				m.metrics.webhookFails.Inc()
			}
		}
	}
}

// handle processes one task on the worker.
func (m *Monitor) handle(ctx context.Context, t task) {
	switch t.kind {
	case taskFirmware:
		m.checkFirmware(ctx, t)
	case taskFinding, taskRaise:
		m.raise(ctx, t)
	}
}

func (m *Monitor) checkFirmware(ctx context.Context, t task) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	allowed, known, err := m.firmware.AllowedVersions(sctx, t.model)
	if err != nil {
		m.log.Error("monitor: cannot read the firmware allowed for a model; the report is not checked",
			"device", clean(t.device, maxIDShown), "model", clean(t.model, maxTextShown), "error", err)
		return
	}
	if !known || slices.Contains(allowed, t.version) {
		return
	}
	shown := slices.Clone(allowed)
	if len(shown) > 8 {
		shown = append(shown[:8], fmt.Sprintf("and %d more", len(allowed)-8))
	}
	t.kind = taskFinding
	t.reason = strings.Join(shown, ", ")
	m.raise(ctx, t)
}

// newAlertID returns 16 random lowercase hex digits.
func newAlertID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (it crashes the program instead)
	return hex.EncodeToString(b[:])
}

// certAlertID is the ID of a certificate's expiry alert: derived from the
// serial, so that the store refuses a second alert for the same
// certificate, after a restart too.
func certAlertID(serial string) string {
	sum := sha256.Sum256([]byte(DetectorCertExpiry + "\x00" + serial))
	return hex.EncodeToString(sum[:8])
}

// raise turns a finding into an alert, or counts it into the alert raised
// for the same detector and subject within the cool-down.
func (m *Monitor) raise(ctx context.Context, t task) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	key := t.detector + "\x00" + t.subject()
	if r, ok := m.recent[key]; ok && t.at.Sub(r.at) < m.cfg.Cooldown {
		_, err := m.st.UpdateAlert(sctx, r.id, 1, t.at)
		switch {
		case err == nil:
			// A repeat still gets the detector's response: the device
			// misbehaves again (it may have reconnected meanwhile).
			m.respond(sctx, t, r.id, m.response(t.detector))
			return
		case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
			// Acknowledged (a finding after that is news) or purged:
			// raise a new alert.
		default:
			m.log.Error("monitor: cannot count a repeat into its alert", "alert", r.id, "detector", t.detector, "error", err)
			return
		}
	}

	a := store.Alert{
		ID: newAlertID(), Detector: t.detector, Device: clean(t.device, store.MaxAlertFieldLength),
		Service: clean(t.service, store.MaxAlertFieldLength), Remote: clean(t.remote, store.MaxAlertFieldLength),
		Count: 1, CreatedAt: t.at, LastSeen: t.at, Response: store.ResponseNone,
	}
	if t.kind == taskRaise {
		f := t.ext
		a.Detector = clean(f.Detector, store.MaxAlertFieldLength)
		a.Severity, a.Summary = f.Severity, clean(f.Summary, store.MaxAlertSummaryLength)
		switch a.Severity {
		case store.SeverityInfo, store.SeverityWarning, store.SeverityCritical:
		default:
			a.Severity = store.SeverityWarning
		}
		if a.Summary == "" {
			a.Summary = a.Detector
		}
		a.Details = make(map[string]string, len(f.Details))
		for _, k := range slices.Sorted(maps.Keys(f.Details)) {
			if len(a.Details) == store.MaxAlertDetails {
				break
			}
			a.Details[clean(k, store.MaxAlertDetailLength)] = clean(f.Details[k], store.MaxAlertDetailLength)
		}
	} else {
		a.Severity = severities[t.detector]
		a.Summary, a.Details = m.describe(t)
	}
	if t.detector == DetectorCertExpiry {
		a.ID = certAlertID(t.serial)
	}
	if t.kind == taskFinding {
		a.Response = m.respond(sctx, t, a.ID, m.response(t.detector))
	}
	if err := m.st.CreateAlert(sctx, a); err != nil {
		if t.detector == DetectorCertExpiry && errors.Is(err, store.ErrConflict) {
			return // alerted before a restart
		}
		m.log.Error("monitor: cannot store an alert; it is only in this log", "detector", a.Detector, "device", a.Device,
			"summary", a.Summary, "error", err)
		return
	}
	if t.detector != DetectorCertExpiry {
		m.recent[key] = recentAlert{id: a.ID, at: t.at}
	}
	m.metrics.alerts.WithLabelValues(a.Detector, a.Severity).Inc()
	m.log.Warn("ALERT: "+a.Summary, "alert", a.ID, "detector", a.Detector, "severity", a.Severity, "device", a.Device, "response", a.Response)
	subject := ""
	switch {
	case a.Device != "":
		subject = identity.Principal{Kind: identity.KindDevice, ID: a.Device}.String()
	case a.Service != "":
		subject = identity.Principal{Kind: identity.KindService, ID: a.Service}.String()
	case a.Remote != "":
		subject = "address:" + a.Remote
	}
	m.audit.Record(sctx, audit.Event{
		Action: "alert." + a.Detector, Outcome: "raised", Actor: "warden", Subject: subject, Reason: a.Summary,
		Remote: a.Remote, Details: map[string]string{"alert": a.ID, "severity": a.Severity, "response": a.Response},
	})
	if m.hooks != nil {
		select {
		case m.hooks <- a:
		default:
			m.metrics.webhookFails.Inc()
			m.log.Warn("monitor: webhook queue full; alert not sent", "alert", a.ID, "endpoint", m.webhook.endpoint())
		}
	}
}

// respond takes response r against the finding's device and returns the
// response actually taken.
func (m *Monitor) respond(ctx context.Context, t task, alertID, r string) string {
	if r == store.ResponseNone || m.responder == nil || t.device == "" {
		return store.ResponseNone
	}
	reason := "alert " + alertID + ": " + t.detector
	switch r {
	case store.ResponseDisconnect:
		m.responder.Disconnect(ctx, t.device, reason)
		m.audit.Record(ctx, audit.Event{Action: "device.disconnect", Outcome: "done", Actor: "warden",
			Subject: identity.Principal{Kind: identity.KindDevice, ID: t.device}.String(), Reason: reason})
		return store.ResponseDisconnect
	case store.ResponseQuarantine:
		if m.IsQuarantined(t.device) {
			return store.ResponseQuarantine
		}
		if err := m.quarantine(ctx, t.device, reason, alertID, "warden"); err != nil {
			m.log.Error("monitor: cannot quarantine a device; it is alerted only", "device", clean(t.device, maxIDShown), "alert", alertID, "error", err)
			return store.ResponseNone
		}
		return store.ResponseQuarantine
	}
	return store.ResponseNone
}

// quarantine records the quarantine durably, then in memory, then on the
// broker. A device the store does not know (an ID a peer made up) cannot
// be quarantined.
func (m *Monitor) quarantine(ctx context.Context, deviceID, reason, alertID, actor string) error {
	err := m.st.SetQuarantine(ctx, store.Quarantine{DeviceID: deviceID, Reason: reason, AlertID: alertID, Actor: actor, CreatedAt: m.clock()})
	switch {
	case errors.Is(err, store.ErrConflict):
		// Quarantined already (by another process): make sure this one
		// knows.
	case err != nil:
		return err
	}
	m.qmu.Lock()
	m.quarantined[deviceID] = struct{}{}
	m.qmu.Unlock()
	if m.responder != nil {
		if err := m.responder.Quarantine(ctx, deviceID, reason); err != nil {
			m.log.Error("monitor: the broker did not apply a quarantine; the device is restricted when it next connects",
				"device", deviceID, "error", err)
		}
	}
	m.audit.Record(ctx, audit.Event{Action: "device.quarantine", Outcome: "done", Actor: actor,
		Subject: identity.Principal{Kind: identity.KindDevice, ID: deviceID}.String(), Reason: reason, Details: detailsIf("alert", alertID)})
	return nil
}

func detailsIf(k, v string) map[string]string {
	if v == "" {
		return nil
	}
	return map[string]string{k: v}
}

// Quarantine quarantines a device on an operator's request: it may then
// only use its OTA and certificate topics until it is released.
// ErrNotFound if there is no such device, ErrConflict if it is
// quarantined already.
func (m *Monitor) Quarantine(ctx context.Context, deviceID, reason, actor string) error {
	if err := identity.ValidateDeviceID(deviceID); err != nil {
		return fmt.Errorf("quarantine: %w", err)
	}
	if actor == "" {
		actor = "operator"
	}
	if m.IsQuarantined(deviceID) {
		return fmt.Errorf("quarantine device %q: it is quarantined already: %w", deviceID, store.ErrConflict)
	}
	return m.quarantine(ctx, deviceID, reason, "", actor)
}

// Release lifts a device's quarantine (store, memory, broker) and audits
// it. ErrNotFound if the device is not quarantined.
func (m *Monitor) Release(ctx context.Context, deviceID, actor string) error {
	if actor == "" {
		actor = "operator"
	}
	q, err := m.st.ClearQuarantine(ctx, deviceID)
	if err != nil {
		// Released elsewhere meanwhile: make this process agree.
		if errors.Is(err, store.ErrNotFound) {
			m.forgetQuarantine(ctx, deviceID)
		}
		return err
	}
	m.forgetQuarantine(ctx, deviceID)
	m.audit.Record(ctx, audit.Event{Action: "device.release", Outcome: "done", Actor: actor,
		Subject: identity.Principal{Kind: identity.KindDevice, ID: deviceID}.String(), Reason: q.Reason})
	m.log.Info("monitor: device released from quarantine", "device", deviceID, "actor", actor)
	return nil
}

// forgetQuarantine drops a released device from memory and the broker.
func (m *Monitor) forgetQuarantine(ctx context.Context, deviceID string) {
	m.qmu.Lock()
	_, was := m.quarantined[deviceID]
	delete(m.quarantined, deviceID)
	m.qmu.Unlock()
	if was && m.responder != nil {
		if err := m.responder.Release(ctx, deviceID); err != nil {
			m.log.Error("monitor: the broker did not lift a quarantine; the device is unrestricted when it next connects",
				"device", deviceID, "error", err)
		}
	}
}

// Quarantined lists the quarantined devices, from the store.
func (m *Monitor) Quarantined(ctx context.Context) ([]store.Quarantine, error) {
	return m.st.ListQuarantines(ctx)
}

// Alerts lists stored alerts (store.AlertStore.ListAlerts).
func (m *Monitor) Alerts(ctx context.Context, f store.AlertFilter) ([]store.Alert, error) {
	return m.st.ListAlerts(ctx, f)
}

// Acknowledge marks an alert acknowledged by actor and audits it. A
// further finding of the same detector about the same subject raises a
// new alert.
func (m *Monitor) Acknowledge(ctx context.Context, id, actor string) (store.Alert, error) {
	if actor == "" {
		actor = "operator"
	}
	a, err := m.st.AcknowledgeAlert(ctx, id, actor, m.clock())
	if err != nil {
		return store.Alert{}, err
	}
	m.audit.Record(ctx, audit.Event{Action: "alert.acknowledge", Outcome: "done", Actor: actor, Subject: "alert:" + id, Reason: a.Detector})
	return a, nil
}

// periodic runs the checks that no event triggers.
func (m *Monitor) periodic(ctx context.Context) {
	now := m.clock()
	m.checkSilence(ctx, now)
	m.forget(now)
	m.syncQuarantines(ctx)
	for k, r := range m.recent {
		if now.Sub(r.at) >= m.cfg.Cooldown {
			delete(m.recent, k)
		}
	}
	if m.cfg.Retention > 0 && now.Sub(m.lastPurge) >= purgeInterval {
		m.lastPurge = now
		sctx, cancel := context.WithTimeout(ctx, storeTimeout)
		n, err := m.st.PurgeAlerts(sctx, now.Add(-m.cfg.Retention))
		cancel()
		switch {
		case err != nil:
			m.log.Error("monitor: cannot purge old alerts", "error", err)
		case n > 0:
			m.log.Info("monitor: purged old alerts", "count", n, "retention", dur(m.cfg.Retention))
		}
	}
	m.metrics.tracked.WithLabelValues("devices").Set(float64(m.devices.len()))
	m.metrics.tracked.WithLabelValues("claims").Set(float64(m.claims.len()))
	m.metrics.tracked.WithLabelValues("sources").Set(float64(m.sources.len()))
	m.metrics.tracked.WithLabelValues("services").Set(float64(m.services.len()))
}

// checkSilence reports, once, each device not heard from for longer than
// its heartbeat. Only devices seen since this process started are known.
func (m *Monitor) checkSilence(ctx context.Context, now time.Time) {
	s := m.cfg.Silence
	if !s.Enabled {
		return
	}
	var found []task
	m.devices.sweep(func(id string, d *deviceState) bool {
		if d.silenceReported || d.lastSeen == 0 {
			return false
		}
		hb := s.Heartbeat
		if v, ok := m.p.heartbeats[d.model]; ok {
			hb = v
		}
		if hb <= 0 {
			return false
		}
		last := time.Unix(0, d.lastSeen)
		if now.Sub(last) > hb {
			d.silenceReported = true
			found = append(found, task{kind: taskFinding, detector: DetectorSilence, at: now, device: id, model: d.model, d: hb, since: last})
		}
		return false
	})
	for _, t := range found {
		m.raise(ctx, t)
	}
}

// forget drops the state of subjects idle for long: devices after
// forget_after, failure counters once their windows have passed twice.
func (m *Monitor) forget(now time.Time) {
	n := now.UnixNano()
	limit := int64(m.cfg.ForgetAfter)
	m.devices.sweep(func(_ string, d *deviceState) bool { return n-d.lastAny > limit })
	w := 2 * max(m.p.authW, m.p.sourceW, m.p.tagW, m.p.replayW, m.p.aclW)
	for _, t := range []*table[subjectState]{m.claims, m.sources, m.services} {
		t.sweep(func(_ string, s *subjectState) bool { return n-s.lastAny > w })
	}
}

// syncQuarantines makes memory agree with the store, where the command
// line (another process) may have released or quarantined a device.
func (m *Monitor) syncQuarantines(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, storeTimeout)
	defer cancel()
	qs, err := m.st.ListQuarantines(sctx)
	if err != nil {
		m.log.Error("monitor: cannot read quarantined devices", "error", err)
		return
	}
	want := make(map[string]string, len(qs))
	for _, q := range qs {
		want[q.DeviceID] = q.Reason
	}
	m.qmu.RLock()
	var released, added []string
	for id := range m.quarantined {
		if _, ok := want[id]; !ok {
			released = append(released, id)
		}
	}
	for id := range want {
		if _, ok := m.quarantined[id]; !ok {
			added = append(added, id)
		}
	}
	m.qmu.RUnlock()
	for _, id := range released {
		m.log.Info("monitor: device released from quarantine elsewhere", "device", id)
		m.forgetQuarantine(sctx, id)
	}
	for _, id := range added {
		m.qmu.Lock()
		m.quarantined[id] = struct{}{}
		m.qmu.Unlock()
		if m.responder != nil {
			if err := m.responder.Quarantine(sctx, id, want[id]); err != nil {
				m.log.Error("monitor: the broker did not apply a quarantine", "device", id, "error", err)
			}
		}
	}
}

// certLifeFraction is the part of its life a certificate must have left,
// at most, to be reported: the device SDK renews with a third left, so a
// healthy device's short-lived certificate is never reported.
const certLifeFraction = 4

// scanCertificates reports the certificates expiring within the window
// (or expired within it), one alert per certificate.
func (m *Monitor) scanCertificates(ctx context.Context) {
	e := m.cfg.CertExpiry
	if !e.Enabled || m.certs == nil {
		return
	}
	now := m.clock()
	f := store.ExpiryFilter{From: now.Add(-e.Window), To: now.Add(e.Window), Limit: store.MaxListLimit}
	// Only the serials still in the window are remembered: the set stays
	// as small as the window's certificates.
	alerted := map[string]bool{}
	for {
		sctx, cancel := context.WithTimeout(ctx, storeTimeout)
		cs, err := m.certs.ExpiringCredentials(sctx, f)
		cancel()
		if err != nil {
			m.log.Error("monitor: cannot scan certificates for expiry", "error", err)
			return
		}
		for _, c := range cs {
			if m.certAlerted[c.Serial] {
				alerted[c.Serial] = true
				continue
			}
			if life := c.NotAfter.Sub(c.NotBefore); life > 0 && c.NotAfter.Sub(now) > life/certLifeFraction {
				continue
			}
			t := task{kind: taskFinding, detector: DetectorCertExpiry, at: now, serial: c.Serial, since: c.NotAfter}
			if c.SubjectKind == identity.KindService {
				t.service = c.SubjectID
			} else {
				t.device = c.SubjectID
			}
			m.raise(ctx, t)
			alerted[c.Serial] = true
		}
		if ctx.Err() != nil {
			return
		}
		if len(cs) < f.Limit {
			m.certAlerted = alerted
			return
		}
		f.After = cs[len(cs)-1].Serial
	}
}
