package sim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/internal/identity"
)

// EnvelopeMode says which devices of a fleet directory are envelope
// devices.
type EnvelopeMode string

const (
	// EnvelopeAuto: a device with an ID.envelope.json bundle is an
	// envelope device, the others are not.
	EnvelopeAuto EnvelopeMode = "auto"
	// EnvelopeOff ignores bundles: every device connects with its
	// certificate alone (its bundle's policy may then make Warden refuse
	// its unsealed uplinks).
	EnvelopeOff EnvelopeMode = "off"
	// EnvelopeOnly loads only the devices that have a bundle.
	EnvelopeOnly EnvelopeMode = "only"
)

// Credential is one device of a fleet directory.
type Credential struct {
	// ID is the device ID, also its MQTT client ID.
	ID string
	// Certificate is the device's certificate and key (with Leaf parsed),
	// or empty for an envelope device that has only a bundle.
	Certificate tls.Certificate
	// Bundle is the path of the device's envelope bundle
	// (ID.envelope.json) when it is simulated as an envelope device; ""
	// otherwise. The bundle is read when the device starts.
	Bundle string
}

// Fleet is a directory of device credentials, as `warden device provision
// --out DIR` and `warden device add ID --out DIR [--envelope]` write them:
// DIR/ID.crt, DIR/ID.key (or ID.key.der, ID.key.raw), DIR/ca.crt, and
// DIR/ID.envelope.json for envelope devices.
type Fleet struct {
	// Dir is the directory the fleet was loaded from.
	Dir string
	// RootCAs is the Warden root the devices pin (DIR/ca.crt); nil when
	// the directory has none, which only envelope devices on plain mqtt://
	// servers can do without.
	RootCAs *x509.CertPool
	// Devices are sorted by ID.
	Devices []Credential
	// Skipped names the certificates in the directory that are not device
	// certificates (a service's or a claim certificate's), with why.
	Skipped []string
}

// LoadOptions says what LoadFleet loads.
type LoadOptions struct {
	// CAFile is the root to pin; default DIR/ca.crt.
	CAFile string
	// Limit loads only the first Limit devices by ID; 0 loads all.
	Limit int
	// Envelope selects envelope devices; default EnvelopeAuto.
	Envelope EnvelopeMode
}

// LoadFleet reads a fleet directory. Every device's certificate and key
// are parsed and checked against each other, in parallel, so that a
// broken file fails here and not in the middle of a run.
func LoadFleet(ctx context.Context, dir string, o LoadOptions) (*Fleet, error) {
	mode := o.Envelope
	if mode == "" {
		mode = EnvelopeAuto
	}
	switch mode {
	case EnvelopeAuto, EnvelopeOff, EnvelopeOnly:
	default:
		return nil, fmt.Errorf("sim: envelope mode %q is not auto, off or only", mode)
	}
	if o.Limit < 0 {
		return nil, fmt.Errorf("sim: the device limit %d is negative", o.Limit)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("sim: read the fleet directory: %w (create one with `warden device provision --count N --out DIR`)", err)
	}
	names := make(map[string]bool, len(entries))
	for _, e := range entries {
		if !e.IsDir() {
			names[e.Name()] = true
		}
	}

	// A device is an ID with a certificate, or (for envelope devices) a
	// bundle. "ca" is the root's file, never a device.
	idSet := make(map[string]bool)
	for name := range names {
		var id string
		switch {
		case strings.HasSuffix(name, ".envelope.json") && mode != EnvelopeOff:
			id = strings.TrimSuffix(name, ".envelope.json")
		case strings.HasSuffix(name, ".crt"):
			id = strings.TrimSuffix(name, ".crt")
		default:
			continue
		}
		if id == "ca" || identity.ValidateDeviceID(id) != nil {
			continue
		}
		if mode == EnvelopeOnly && !names[id+".envelope.json"] {
			continue
		}
		idSet[id] = true
	}
	ids := make([]string, 0, len(idSet))
	for id := range idSet {
		ids = append(ids, id)
	}
	slices.Sort(ids)

	f := &Fleet{Dir: dir}
	caFile := o.CAFile
	if caFile == "" {
		caFile = filepath.Join(dir, "ca.crt")
	}
	caPEM, err := os.ReadFile(caFile)
	switch {
	case err == nil:
		f.RootCAs = x509.NewCertPool()
		if !f.RootCAs.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("sim: %s holds no PEM certificate; export the root with `warden ca export-root --out FILE`", caFile)
		}
	case errors.Is(err, fs.ErrNotExist) && o.CAFile == "":
		// Only envelope devices on plain servers can do without; Run says
		// so if a TLS server is listed.
	default:
		return nil, fmt.Errorf("sim: read the root certificate: %w", err)
	}

	// Load in parallel: parsing 15,000 keys and certificates takes a few
	// seconds on one core.
	type result struct {
		cred Credential
		skip string
		err  error
	}
	results := make([]result, len(ids))
	var next sync.Mutex
	i := 0
	kept := 0 // devices loaded, for Limit
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				next.Lock()
				if i >= len(ids) || (o.Limit > 0 && kept >= o.Limit) || ctx.Err() != nil {
					next.Unlock()
					return
				}
				j := i
				i++
				next.Unlock()
				r := &results[j]
				r.cred, r.skip, r.err = loadDevice(dir, ids[j], names, caFile, mode)
				if r.err == nil && r.skip == "" {
					next.Lock()
					kept++
					next.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("sim: load the fleet: %w", err)
	}
	// Results are read in ID order, so Limit keeps the first devices by
	// ID whichever worker loaded them.
	for j := range results {
		r := results[j]
		switch {
		case o.Limit > 0 && len(f.Devices) >= o.Limit:
		case r.err != nil:
			return nil, r.err
		case r.skip != "":
			f.Skipped = append(f.Skipped, r.skip)
		case r.cred.ID != "":
			f.Devices = append(f.Devices, r.cred)
		}
	}
	if len(f.Devices) == 0 {
		return nil, fmt.Errorf("sim: no device credentials in %s (ID.crt with ID.key, or ID.envelope.json); provision some with `warden device provision --count N --out %s`", dir, dir)
	}
	return f, nil
}

// loadDevice reads one device's files. A certificate that names something
// other than a device is skipped with a note; anything unreadable is an
// error.
func loadDevice(dir, id string, names map[string]bool, caFile string, mode EnvelopeMode) (Credential, string, error) {
	c := Credential{ID: id}
	if mode != EnvelopeOff && names[id+".envelope.json"] {
		c.Bundle = filepath.Join(dir, id+".envelope.json")
	}
	if !names[id+".crt"] {
		return c, "", nil // a bundle alone: an envelope device for plain servers
	}
	var keyFile string
	for _, k := range []string{id + ".key", id + ".key.der", id + ".key.raw"} {
		if names[k] {
			keyFile = filepath.Join(dir, k)
			break
		}
	}
	certFile := filepath.Join(dir, id+".crt")
	if keyFile == "" {
		return c, "", fmt.Errorf("sim: %s has no private key beside it (%s.key, .key.der or .key.raw); a device provisioned with --key-to-stdout or --exec cannot be simulated", certFile, id)
	}
	// LoadCredentials wants a root file; the fleet's pool is used instead
	// of the one it returns.
	cert, _, err := loadCredentials(certFile, keyFile, caFile)
	if err != nil {
		return c, "", fmt.Errorf("sim: device %s: %w", id, err)
	}
	kind, uriID, err := identity.FromURIs(cert.Leaf.URIs)
	switch {
	case err != nil:
		return c, fmt.Sprintf("%s: %v", certFile, err), nil
	case kind != identity.KindDevice:
		return c, fmt.Sprintf("%s: a %s certificate (%s), not a device's", certFile, kind, uriID), nil
	case uriID != id:
		return c, "", fmt.Errorf("sim: %s names device %q, not %q; keep each device's files under its own ID", certFile, uriID, id)
	}
	c.Certificate = cert
	return c, "", nil
}

// loadCredentials is device.LoadCredentials with the root optional: a
// fleet may lack ca.crt when only envelope devices use it.
func loadCredentials(certFile, keyFile, caFile string) (tls.Certificate, *x509.CertPool, error) {
	if _, err := os.Stat(caFile); err != nil {
		caFile = certFile // any PEM certificate satisfies the loader; the pool is discarded
	}
	return device.LoadCredentials(certFile, keyFile, caFile)
}
