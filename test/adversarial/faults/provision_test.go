package faults

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/store/sqlite"
	"github.com/warden-iot/warden/internal/wardentest"
)

// provisionBatch is the size of the killed batch.
func provisionBatch() int { return scaled(200, 100) }

// Threat: a crash in the middle of `warden device provision --count N`
// leaves a half-registered device: a registry row without a credential, a
// registered device whose key or certificate was never delivered, or key
// material delivered for an ID the registry does not know, which could
// take the ID over once it is registered later.
//
// Control: cmd/warden/device.go provisionOne issues (registry.IssueDevice,
// nothing stored), writes the certificate and the key atomically
// (fileutil.WriteFileAtomic) and only then registers (registry.
// RegisterDevice, one transaction for the device and its credential); the
// broker accepts only certificates whose serial the registry holds for the
// device (internal/broker authentication against registry credentials).
//
// Consistency, both directions:
//   - store → files: every device in the store has an unrevoked credential
//     with its certificate, and DIR/ID.crt is that certificate and DIR/ID.key
//     its key;
//   - files → store: every DIR/ID.key or DIR/ID.crt belongs to a registered
//     device, except at most one orphan per kill (the device in flight),
//     which is not registered and whose certificate is refused (MQTT
//     CONNECT over mTLS), also after its ID is registered anew with another
//     key;
//   - every ID the CLI printed is registered, and at most one registered
//     device per kill was not printed (killed between commit and print).
//
// Kill points, each after a share of the batch was printed, the moment the
// kernel reports (inotify) the next device's file: the CLI (through the
// admin socket) killed as the key appears, before it registers; the server
// killed as the key appears, while the CLI registers through it; the CLI
// on a stopped server (writing the data directory itself) killed as the
// certificate appears, before the key.
func TestKillDuringBatchProvisioning(t *testing.T) {
	t.Parallel()
	for _, kp := range []struct {
		name       string
		offline    bool   // no server runs: the CLI opens the data directory
		killServer bool   // kill the server instead of the CLI
		afterLines int    // kill once this many devices were printed ...
		fileSuffix string // ... and then, if set, once the next device's file with this suffix appears
	}{
		{name: "cli-killed-between-key-and-registration", afterLines: provisionBatch() / 3, fileSuffix: ".key"},
		{name: "server-killed-as-cli-registers", killServer: true, afterLines: provisionBatch() / 2, fileSuffix: ".key"},
		{name: "cli-killed-on-stopped-server-after-certificate-written", offline: true, afterLines: provisionBatch() / 4, fileSuffix: ".crt"},
	} {
		t.Run(kp.name, func(t *testing.T) {
			n := startNode(t)
			if kp.offline {
				n.stop()
			}
			out := t.TempDir()
			created := watchDir(t, out, false)
			p := n.startCLI("device", "provision", "--count", fmt.Sprint(provisionBatch()), "--model", "fault", "--out", out)
			var printed []string
			for l := range p.lines {
				printed = append(printed, l)
				if len(printed) == kp.afterLines {
					break
				}
			}
			if kp.fileSuffix != "" {
				// The next device's file: the CLI is between delivering it
				// and reporting it.
				said := map[string]bool{}
				for _, id := range printed {
					said[id] = true
				}
				timeout := time.After(time.Minute)
			wait:
				for {
					select {
					case name := <-created:
						if id, ok := strings.CutSuffix(name, kp.fileSuffix); ok && !strings.HasPrefix(id, ".") && id != "ca" && !said[id] {
							t.Logf("killing as %s appeared", name)
							break wait
						}
					case <-timeout:
						t.Fatal("no new device file appeared")
					}
				}
			}
			if kp.killServer {
				n.kill()
			} else {
				p.kill()
			}
			rest, err := p.wait(t)
			printed = append(printed, rest...)
			if len(printed) < kp.afterLines {
				t.Fatalf("the CLI printed %d devices before it ended (%v); want at least %d\nstderr: %s", len(printed), err, kp.afterLines, p.stderr)
			}
			if len(printed) >= provisionBatch() {
				t.Fatalf("the batch finished before the kill")
			}
			if kp.killServer {
				if err == nil || !strings.Contains(p.stderr.String(), "devices were provisioned before this one") {
					t.Errorf("with the server killed the CLI exited with %v and said:\n%s\nwant a failure naming how many devices were provisioned", err, p.stderr)
				}
			}
			t.Logf("kill after %d printed IDs; %d printed in all; CLI exit: %v", kp.afterLines, len(printed), err)
			if kp.killServer {
				n.restart()
			}

			st := wardentest.OpenStore(t, n.Data)
			c := checkProvisioned(t, st, out, printed, 1)
			t.Logf("after the kill: %d registered, %d orphaned key files, %d temporary files", len(c.registered), len(c.orphans), c.temps)

			// A re-run (on the stopped server too, if that is where the
			// batch was killed) completes the batch.
			missing := provisionBatch() - len(c.registered)
			rerun := strings.Fields(n.mustCLI("device", "provision", "--count", fmt.Sprint(missing), "--model", "fault", "--out", out))
			if len(rerun) != missing {
				t.Fatalf("the re-run printed %d devices, want %d", len(rerun), missing)
			}
			c2 := checkProvisioned(t, st, out, append(printed, rerun...), 1)
			if len(c2.registered) != provisionBatch() {
				t.Errorf("after the re-run %d devices are registered, want %d", len(c2.registered), provisionBatch())
			}
			if kp.offline {
				n.restart()
			}

			// A leftover of the device in flight is useless: its
			// certificate is refused, and stays refused when its ID is
			// registered anew with another key.
			for _, id := range c.orphans {
				oc := creds(out, id)
				if _, err := os.Stat(oc.Key); err != nil {
					t.Logf("orphan %s has a certificate but no key: nobody can use it", id)
					continue
				}
				if _, err := os.Stat(oc.Cert); err != nil {
					t.Logf("orphan %s has a key but no certificate", id)
					continue
				}
				refusals := n.Metric(t, "warden_mqtt_auth_failures_total", `reason="unknown-credential"`)
				if connects(t, n.MQTTS, oc) {
					t.Errorf("ORPHAN ACCEPTED: %s (delivered, never registered) connected", id)
				}
				fresh := t.TempDir()
				n.mustCLI("device", "add", id, "--out", fresh)
				n.secrets.AddCredentialDir(t, fresh)
				if connects(t, n.MQTTS, oc) {
					t.Errorf("ORPHAN TAKEOVER: the orphaned certificate of %s connected once the ID was registered with another key", id)
				}
				if !connects(t, n.MQTTS, creds(fresh, id)) {
					t.Errorf("the new registration of %s cannot connect", id)
				}
				// Refused as a credential the registry never held: audited
				// and counted, both times.
				wardentest.Eventually(t, 10*time.Second, "the orphan's refusals in the audit log", func() bool {
					return auditCount(n.Data, `"action":"mqtt.connect"`, `"outcome":"denied"`, `"actor":"device:`+id+`"`, `"reason":"unknown-credential"`) >= 2
				})
				if got := n.Metric(t, "warden_mqtt_auth_failures_total", `reason="unknown-credential"`); got < refusals+2 {
					t.Errorf(`warden_mqtt_auth_failures_total{reason="unknown-credential"} = %v, want at least %v`, got, refusals+2)
				}
				t.Logf("orphan %s: refused (unknown-credential, audited, counted) before and after its ID was registered anew", id)
			}

			// The batch works: devices from before and after the kill
			// connect with what was delivered to them.
			for _, id := range []string{printed[0], printed[len(printed)-1], rerun[len(rerun)-1]} {
				if !connects(t, n.MQTTS, creds(out, id)) {
					t.Errorf("provisioned device %s cannot connect", id)
				}
			}
			n.secrets.AddCredentialDir(t, out)
			n.checkAtRest()
		})
	}
}

// provisioned is what checkProvisioned found.
type provisioned struct {
	registered map[string]bool
	orphans    []string // IDs with delivered files but no registration
	temps      int      // temporary files of interrupted writes
}

// checkProvisioned checks the store and the provisioning directory against
// each other and against what the CLI printed; kills is how many kills
// the batch went through (one orphan and one unprinted device each, at
// most).
func checkProvisioned(t *testing.T, st *sqlite.Store, dir string, printed []string, kills int) provisioned {
	t.Helper()
	ctx := context.Background()
	c := provisioned{registered: map[string]bool{}}
	f := store.DeviceFilter{Model: "fault", Limit: store.MaxListLimit}
	for {
		page, err := st.ListDevices(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page {
			c.registered[d.ID] = true
		}
		if len(page) < f.PageSize() {
			break
		}
		f.After = page[len(page)-1].ID
	}
	// store → files
	for id := range c.registered {
		cr, err := st.Credentials(ctx, identity.KindDevice, id)
		if err != nil {
			t.Fatalf("credentials of %s: %v", id, err)
		}
		var live []store.Credential
		for _, x := range cr {
			if !x.Revoked() && len(x.Certificate) > 0 {
				live = append(live, x)
			}
		}
		if len(live) == 0 {
			t.Errorf("HALF-REGISTERED: device %s is in the store without a usable credential (%d credentials)", id, len(cr))
			continue
		}
		cert, err := wardentest.CertificateMatchesKey(filepath.Join(dir, id+".crt"), filepath.Join(dir, id+".key"))
		if err != nil {
			t.Errorf("HALF-REGISTERED: registered device %s lacks its delivered credential: %v", id, err)
			continue
		}
		if !slices.ContainsFunc(live, func(x store.Credential) bool { return x.Fingerprint == pki.Fingerprint(cert) }) {
			t.Errorf("registered device %s: %s.crt (serial %s) is not a credential the registry holds", id, id, pki.SerialHex(cert.SerialNumber))
		}
		if err := checkIssuedFor(cert, id); err != nil {
			t.Errorf("device %s: %v", id, err)
		}
	}
	// files → store
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	orphan := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, "."):
			if strings.Contains(name, ".tmp-") {
				c.temps++
			}
		case name == "ca.crt":
		case strings.HasSuffix(name, ".key"), strings.HasSuffix(name, ".crt"):
			id := strings.TrimSuffix(strings.TrimSuffix(name, ".key"), ".crt")
			if !c.registered[id] {
				orphan[id] = true
			}
		}
	}
	for id := range orphan {
		c.orphans = append(c.orphans, id)
	}
	slices.Sort(c.orphans)
	if len(c.orphans) > kills {
		t.Errorf("%d IDs have delivered key material but are not registered (%v); at most %d (the device in flight at each kill) may", len(c.orphans), c.orphans, kills)
	}
	if c.temps > 2*kills {
		t.Errorf("%d temporary files left; at most two per kill (a certificate and a key being written)", c.temps)
	}
	// what the CLI said
	said := map[string]bool{}
	for _, id := range printed {
		said[id] = true
		if !c.registered[id] {
			t.Errorf("the CLI printed %s as provisioned, but it is not registered", id)
		}
	}
	unsaid := 0
	for id := range c.registered {
		if !said[id] {
			unsaid++
		}
	}
	if unsaid > kills {
		t.Errorf("%d registered devices were never printed; at most %d (killed between commit and print) may be", unsaid, kills)
	}
	return c
}

// checkIssuedFor checks that cert names the device id, as the registry
// issues it.
func checkIssuedFor(cert *x509.Certificate, id string) error {
	kind, got, err := identity.FromURIs(cert.URIs)
	if err != nil {
		return err
	}
	if kind != identity.KindDevice || got != id || cert.Subject.CommonName != id {
		return fmt.Errorf("certificate names %s:%s (CN %q), not device %s", kind, got, cert.Subject.CommonName, id)
	}
	return nil
}
