package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/otaproto"
)

// OTACounts says how the fleet's OTA agents fared (device.OTAEvent states).
type OTACounts struct {
	Offered    uint64 `json:"offered"`     // releases accepted for download
	Refused    uint64 `json:"refused"`     // offers refused before downloading
	Verified   uint64 `json:"verified"`    // images downloaded and verified
	Installed  uint64 `json:"installed"`   // images handed to the simulated installer
	Booted     uint64 `json:"booted"`      // releases reported booted
	Failed     uint64 `json:"failed"`      // updates that failed
	RolledBack uint64 `json:"rolled_back"` // releases reverted
	Bytes      uint64 `json:"bytes"`       // image bytes installed
}

type otaCounters struct {
	offered, refused, verified, installed, booted, failed, rolledBack, bytes atomic.Uint64
}

func (c *otaCounters) counts() OTACounts {
	return OTACounts{
		Offered: c.offered.Load(), Refused: c.refused.Load(), Verified: c.verified.Load(),
		Installed: c.installed.Load(), Booted: c.booted.Load(), Failed: c.failed.Load(),
		RolledBack: c.rolledBack.Load(), Bytes: c.bytes.Load(),
	}
}

// OTA returns the OTA counts so far.
func (s *Swarm) OTA() OTACounts { return s.ota.counts() }

// onOTAEvent counts one step of an update.
func (s *Swarm) onOTAEvent(id string, ev device.OTAEvent) {
	c := &s.ota
	switch ev.State {
	case device.OTAOffered:
		c.offered.Add(1)
	case device.OTARefused:
		c.refused.Add(1)
		s.errs.add(ErrOTA, fmt.Errorf("device %s: OTA offer refused: %w", id, ev.Err))
	case otaproto.StateVerified:
		c.verified.Add(1)
	case otaproto.StateBooted:
		c.booted.Add(1)
	case otaproto.StateFailed:
		c.failed.Add(1)
		s.errs.add(ErrOTA, fmt.Errorf("device %s: OTA update failed: %w", id, ev.Err))
	case otaproto.StateRolledBack:
		c.rolledBack.Add(1)
		s.errs.add(ErrOTA, fmt.Errorf("device %s: OTA release rolled back: %w", id, ev.Err))
	}
}

// startOTA starts d's OTA agent. Its installer checks the image once more
// against the statement, discards it and boots it in place, as a real
// device would after a reboot into the new image. If Start fails the agent
// is closed, and the next attempt starts a fresh one over the same store.
func (s *Swarm) startOTA(ctx context.Context, d *simDevice, cl *device.Client) error {
	id := d.cred.ID
	var agent *device.Agent
	var mu sync.Mutex // agent is set after OTA returns; the installer runs later
	install := func(ctx context.Context, img *firmware.Image, file []byte, st firmware.Statement) error {
		if int64(len(file)) != st.ImageSize {
			return fmt.Errorf("sim: the image is %d bytes, the statement says %d", len(file), st.ImageSize)
		}
		if img == nil {
			return errors.New("sim: the agent handed over no parsed image")
		}
		s.ota.installed.Add(1)
		s.ota.bytes.Add(uint64(len(file)))
		mu.Lock()
		a := agent
		mu.Unlock()
		if err := a.Booted(ctx, st.Version, st.SecurityCounter, st.Sequence); err != nil {
			s.errs.add(ErrOTA, fmt.Errorf("device %s: report the simulated boot: %w", id, err))
		}
		return nil // installed; only the report may have failed, and the next start reports again
	}
	d.agentMu.Lock()
	if d.otaStore == nil {
		d.otaStore = &memOTAStore{}
	}
	store := d.otaStore
	d.agentMu.Unlock()
	a, err := cl.OTA(device.OTAConfig{
		ReleaseKey: s.o.OTA.ReleaseKey,
		Model:      s.o.OTA.Model,
		Store:      store,
		Installer:  install,
		Transport:  s.o.OTA.Transport,
		HTTPSBase:  s.o.OTA.HTTPSBase,
		RootCAs:    s.o.Fleet.RootCAs,
		Logger:     s.o.DeviceLogger,
		OnEvent:    func(ev device.OTAEvent) { s.onOTAEvent(id, ev) },
	})
	if err != nil {
		return err
	}
	mu.Lock()
	agent = a
	mu.Unlock()
	if err := a.Start(ctx); err != nil {
		_ = a.Close()
		return err
	}
	d.agentMu.Lock()
	d.agent = a
	d.agentMu.Unlock()
	return nil
}

// memOTAStore is an OTAStore in memory: a simulated device has no flash,
// and forgets its firmware state between runs (it reports the version 0.0.0
// at each start).
type memOTAStore struct {
	mu    sync.Mutex
	state device.OTAState
	dl    *memDownload
}

func (m *memOTAStore) Load() (device.OTAState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.state
	if st.Pending != nil {
		p := *st.Pending
		st.Pending = &p
	}
	return st, nil
}

func (m *memOTAStore) Save(st device.OTAState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st.Pending != nil {
		p := *st.Pending
		st.Pending = &p
	}
	m.state = st
	return nil
}

func (m *memOTAStore) OpenDownload(sha string) (device.OTADownload, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dl == nil || m.dl.sha != sha {
		m.dl = &memDownload{sha: sha}
	}
	return m.dl, nil
}

func (m *memOTAStore) RemoveDownload() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dl = nil
	return nil
}

// memDownload is a partial download in memory; it outlives Close so that
// an interrupted download resumes, as the interface asks.
type memDownload struct {
	sha string
	mu  sync.Mutex
	buf bytes.Buffer
}

func (d *memDownload) Size() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return int64(d.buf.Len())
}

func (d *memDownload) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.buf.Write(p)
}

func (d *memDownload) Truncate(n int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n < 0 || n > int64(d.buf.Len()) {
		return fmt.Errorf("sim: truncate a download of %d bytes to %d", d.buf.Len(), n)
	}
	d.buf.Truncate(int(n))
	return nil
}

func (d *memDownload) Sync() error { return nil }

func (d *memDownload) Bytes() ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.buf.Bytes()), nil
}

func (d *memDownload) Close() error { return nil }
