package tlsposture

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/wardentest"
)

// TestScannersFindOnlyModernTLS scans every TLS listener, on the strict
// and on the compat profile, with sslscan and testssl.sh, and checks what
// they found against the policy: nothing below TLS 1.2 anywhere, TLS 1.2
// only on compat listeners and then only ECDHE with an AEAD, no
// compression, no insecure renegotiation, an ECDSA P-256 certificate.
// The compat scans double as the control: they must see TLS 1.2, so a
// strict listener's "no TLS 1.2" is a finding, not a blind scanner.
func TestScannersFindOnlyModernTLS(t *testing.T) {
	t.Parallel()
	wardentest.RequireTool(t, "sslscan", "sslscan")
	testssl := testsslBinary(t)
	strict := wardentest.Start(t, t.TempDir())
	compat := wardentest.Start(t, t.TempDir(), compatFlags...)

	type target struct {
		l      listener
		s      *wardentest.Server
		policy Policy
		creds  wardentest.Creds
	}
	var targets []target
	for _, srv := range []struct {
		s      *wardentest.Server
		policy Policy
	}{{strict, Policy{}}, {compat, Policy{AllowTLS12: true}}} {
		c := srv.s.AddDevice("scanner")
		for _, l := range tlsListeners(srv.s) {
			targets = append(targets, target{l, srv.s, srv.policy, c})
		}
	}
	name := func(tg target) string {
		if tg.policy.AllowTLS12 {
			return tg.l.name + "/compat"
		}
		return tg.l.name + "/strict"
	}

	// testssl.sh runs in the background while sslscan works: it takes
	// seconds per check, sslscan a fraction of one.
	type testsslResult struct {
		fs   TestSSLFindings
		text string
		err  error
	}
	checks := []string{"-p", "-E", "-C", "-R"}
	require := []string{"SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "CRIME_TLS", "secure_renego"}
	timeout := 3 * time.Minute
	var scanned []target
	for _, tg := range targets {
		// CI scans the compat api listener: it allows TLS 1.2, where
		// compression and renegotiation exist at all, and it does not
		// require a client certificate, so testssl.sh can complete the
		// handshakes its renegotiation checks need. sslscan covers the
		// others (with a client certificate).
		if full() || (tg.policy.AllowTLS12 && tg.l.name == "api") {
			scanned = append(scanned, tg)
		}
	}
	if full() {
		checks = []string{"-p", "-E", "-f", "-S", "-R", "-C", "-U"}
		require = append(require, "cert_keySize", "cert_signatureAlgorithm", "heartbleed", "ROBOT", "POODLE_SSL")
		timeout = 15 * time.Minute
	}
	results := make([]testsslResult, len(scanned))
	var wg sync.WaitGroup
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	// On an early failure, stop the scans before the directory they write
	// to is removed.
	defer func() { cancel(); wg.Wait() }()
	start := time.Now()
	// At most two at once: testssl.sh forks openssl for every probe, and
	// the machine has two cores.
	sem := make(chan struct{}, 2)
	for i, tg := range scanned {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			fs, text, err := runTestSSL(ctx, testssl, dir, tg.l.addr, checks)
			results[i] = testsslResult{fs, text, err}
		}()
	}

	for _, tg := range targets {
		t.Run("sslscan/"+name(tg), func(t *testing.T) {
			r, raw := runSSLScan(t, tg.l.addr, tg.creds)
			if v := r.Violations(tg.policy); len(v) > 0 {
				t.Errorf("sslscan %s (%s):\n  %s\nfull output:\n%s", tg.l.addr, name(tg), strings.Join(v, "\n  "), raw)
			}
			if tg.policy.AllowTLS12 && !r.Protocols["TLSv1.2"] {
				t.Errorf("sslscan saw no TLS 1.2 on a compat listener: the scan cannot be trusted to see it elsewhere:\n%s", raw)
			}
			var versions []string
			for _, c := range r.Ciphers {
				versions = append(versions, c.Version+" "+c.Name)
			}
			t.Logf("%s: %s", name(tg), strings.Join(versions, ", "))
		})
	}

	// The scanners' probes of old protocols reached every listener, which
	// refused, counted and audited them (the api listener's handshakes go
	// through the broker's front door too: broker.GuardHTTPS).
	for _, l := range tlsListeners(strict) {
		wardentest.Eventually(t, 5*time.Second, "the scan's refused handshakes on "+l.name, func() bool {
			return handshakeFailures(t, strict, l.name, "protocol-version") > 0 &&
				strict.AuditContains(`"action":"tls.handshake"`, `"outcome":"denied"`, `"reason":"protocol-version"`, `"listener":"`+l.name+`"`)
		})
	}

	wg.Wait()
	t.Logf("testssl.sh %v on %d listener(s) took %v", checks, len(scanned), time.Since(start).Round(time.Millisecond))
	for i, tg := range scanned {
		t.Run("testssl/"+name(tg), func(t *testing.T) {
			res := results[i]
			if res.err != nil {
				t.Fatalf("%v\n%s", res.err, res.text)
			}
			req := require
			if tg.policy.AllowTLS12 {
				req = append(req, "cipher-tls1_2_xc02b") // the control: testssl.sh sees TLS 1.2 suites
				if full() {
					req = append(req, "SWEET32") // skipped on TLS 1.3-only listeners
				}
			}
			if v := res.fs.Violations(tg.policy, req...); len(v) > 0 {
				t.Errorf("testssl.sh %s (%s):\n  %s\noutput:\n%s", tg.l.addr, name(tg), strings.Join(v, "\n  "), res.text)
			}
			for _, f := range res.fs {
				if f.Severity == "WARN" {
					t.Logf("testssl.sh could not test %s: %s", f.ID, f.Finding)
				}
			}
		})
	}
}
