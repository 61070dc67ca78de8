package tlsposture

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// containsAll reports whether every want is a substring of some violation.
func containsAll(got []string, want ...string) bool {
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.Contains(g, w) }) {
			return false
		}
	}
	return true
}

func TestParseSSLScanXML(t *testing.T) {
	strict := string(readTestdata(t, "sslscan-strict.xml"))
	compat := string(readTestdata(t, "sslscan-compat.xml"))
	cases := []struct {
		name   string
		xml    string
		policy Policy
		want   []string // substrings of violations; none means a clean pass
	}{
		{"real strict listener", strict, Policy{}, nil},
		{"real compat listener", compat, Policy{AllowTLS12: true}, nil},
		{"compat output judged as strict", compat, Policy{},
			[]string{"TLSv1.2 is offered on a strict listener", "ECDHE-ECDSA-AES128-GCM-SHA256 accepted with TLSv1.2"}},
		{"TLS 1.0 offered", strings.Replace(strict, `version="1.0" enabled="0"`, `version="1.0" enabled="1"`, 1), Policy{},
			[]string{"TLSv1.0 is offered"}},
		{"SSLv3 offered", strings.Replace(strict, `version="3" enabled="0"`, `version="3" enabled="1"`, 1), Policy{},
			[]string{"SSLv3 is offered"}},
		{"no TLS 1.3", strings.Replace(strict, `version="1.3" enabled="1"`, `version="1.3" enabled="0"`, 1), Policy{},
			[]string{"TLSv1.3 is not offered"}},
		{"protocol missing", strings.Replace(strict, `<protocol type="tls" version="1.1" enabled="0" />`, "", 1), Policy{},
			[]string{"did not report on TLSv1.1"}},
		{"CBC suite", strings.Replace(compat, `cipher="ECDHE-ECDSA-AES256-GCM-SHA384" id="0xC02C"`, `cipher="ECDHE-ECDSA-AES256-SHA384" id="0xC024"`, 1),
			Policy{AllowTLS12: true}, []string{"ECDHE-ECDSA-AES256-SHA384 (TLSv1.2, 0xC024): CBC mode"}},
		{"RSA key exchange", strings.Replace(compat, `cipher="ECDHE-ECDSA-AES256-GCM-SHA384" id="0xC02C"`, `cipher="AES256-GCM-SHA384" id="0x009D"`, 1),
			Policy{AllowTLS12: true}, []string{"AES256-GCM-SHA384 (TLSv1.2, 0x009D): RSA key exchange"}},
		{"insecure renegotiation", strings.Replace(strict, `<renegotiation supported="0" secure="0" />`, `<renegotiation supported="1" secure="0" />`, 1), Policy{},
			[]string{"insecure renegotiation"}},
		{"secure renegotiation is not a finding", strings.Replace(strict, `<renegotiation supported="0" secure="0" />`, `<renegotiation supported="1" secure="1" />`, 1), Policy{}, nil},
		{"compression", strings.Replace(strict, `<renegotiation`, `<compression supported="1" /><renegotiation`, 1), Policy{},
			[]string{"compression"}},
		{"heartbleed", strings.Replace(strict, `vulnerable="0"`, `vulnerable="1"`, 1), Policy{}, []string{"Heartbleed over TLSv1.3"}},
		{"RSA certificate", strings.Replace(strict, `type="EC" curve_name="prime256v1"`, `type="RSA" curve_name=""`, 1), Policy{},
			[]string{"has a RSA key"}},
		{"P-384 certificate", strings.Replace(strict, `curve_name="prime256v1"`, `curve_name="secp384r1"`, 1), Policy{},
			[]string{"on \"secp384r1\""}},
		{"SHA-1 signature", strings.Replace(strict, `ecdsa-with-SHA256`, `ecdsa-with-SHA1`, 1), Policy{},
			[]string{"signed with ecdsa-with-SHA1"}},
		{"no certificate", strict[:strings.Index(strict, "<certificates>")] + "</ssltest></document>", Policy{},
			[]string{"no server certificate"}},
		{"no cipher: the scan did not get through", removeLines(strict, "<cipher "), Policy{},
			[]string{"no accepted cipher suite"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseSSLScanXML([]byte(tc.xml))
			if err != nil {
				t.Fatal(err)
			}
			got := r.Violations(tc.policy)
			if len(tc.want) == 0 && len(got) != 0 {
				t.Fatalf("violations %q, want none", got)
			}
			if !containsAll(got, tc.want...) {
				t.Fatalf("violations %q, want ones containing %q", got, tc.want)
			}
		})
	}
}

func removeLines(s, containing string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, containing) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func TestParseSSLScanXMLRefusesBrokenScans(t *testing.T) {
	strict := string(readTestdata(t, "sslscan-strict.xml"))
	for name, doc := range map[string]string{
		"not XML":           "Could not resolve hostname",
		"empty document":    `<document></document>`,
		"two targets":       strings.Replace(strict, "</document>", `<ssltest host="h" port="1"></ssltest></document>`, 1),
		"sslscan error":     `<document><error><![CDATA[Could not open a connection to host 127.0.0.1 on port 1.]]></error></document>`,
		"error in the test": strings.Replace(strict, "<renegotiation", "<error>connection refused</error><renegotiation", 1),
		"bad flag":          strings.Replace(strict, `version="1.0" enabled="0"`, `version="1.0" enabled="yes"`, 1),
		"unknown protocol":  strings.Replace(strict, `type="tls" version="1.0"`, `type="tls" version="1.4"`, 1),
		"duplicate":         strings.Replace(strict, `<protocol type="tls" version="1.0" enabled="0" />`, `<protocol type="tls" version="1.0" enabled="0" /><protocol type="tls" version="1.0" enabled="1" />`, 1),
		"bad cipher id":     strings.Replace(strict, `id="0x1301"`, `id="1301"`, 1),
		"rejected cipher":   strings.Replace(strict, `status="preferred"`, `status="rejected"`, 1),
	} {
		t.Run(name, func(t *testing.T) {
			if r, err := ParseSSLScanXML([]byte(doc)); err == nil {
				t.Fatalf("parsed %+v, want an error", r)
			}
		})
	}
}

func TestSuiteProblem(t *testing.T) {
	for name, want := range map[string]string{
		"TLS_AES_128_GCM_SHA256":                        "",
		"TLS_CHACHA20_POLY1305_SHA256":                  "",
		"ECDHE-ECDSA-AES128-GCM-SHA256":                 "",
		"ECDHE-ECDSA-CHACHA20-POLY1305":                 "",
		"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384":       "",
		"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256":   "",
		"ECDHE-ECDSA-AES128-SHA256":                     "CBC mode",
		"ECDHE-RSA-AES256-SHA":                          "CBC mode",
		"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA":          "CBC mode",
		"AES128-GCM-SHA256":                             "RSA key exchange (no forward secrecy)",
		"TLS_RSA_WITH_AES_128_GCM_SHA256":               "RSA key exchange (no forward secrecy)",
		"AES256-SHA":                                    "RSA key exchange (no forward secrecy), CBC mode",
		"DES-CBC3-SHA":                                  "RSA key exchange (no forward secrecy), CBC mode",
		"DHE-RSA-AES128-GCM-SHA256":                     "not an ECDHE key exchange",
		"ECDHE-RSA-RC4-SHA":                             "not an AEAD cipher",
		"TLS_ECDHE_ECDSA_WITH_NULL_SHA":                 "not an AEAD cipher",
		"TLS_EMPTY_RENEGOTIATION_INFO_SCSV":             "unrecognised IANA suite name",
		"":                                              "no suite name",
		"TLS_ECDH_ECDSA_WITH_AES_128_GCM_SHA256":        "not an ECDHE key exchange",
		"SSL_RSA_WITH_3DES_EDE_CBC_SHA":                 "RSA key exchange (no forward secrecy), CBC mode",
		"TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256":     "not an ECDHE key exchange",
		"ECDHE-ECDSA-AES128-CCM":                        "",
		"TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8":            "",
		"tls_ecdhe_ecdsa_with_aes_128_gcm_sha256 (low)": "",
	} {
		if got := suiteProblem(name); got != want {
			t.Errorf("suiteProblem(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestParseTestSSLJSON(t *testing.T) {
	parse := func(name string) TestSSLFindings {
		fs, err := ParseTestSSLJSON(readTestdata(t, name))
		if err != nil {
			t.Fatal(err)
		}
		return fs
	}
	compat, strictAPI, vulns := parse("testssl-compat-mqtts.json"), parse("testssl-strict-api.json"), parse("testssl-compat-api-vulns.json")
	// set returns a copy of fs with finding id changed (or added).
	set := func(fs TestSSLFindings, id, severity, finding string) TestSSLFindings {
		out := slices.Clone(fs)
		for i := range out {
			if out[i].ID == id {
				out[i].Severity, out[i].Finding = severity, finding
				return out
			}
		}
		return append(out, TestSSLFinding{ID: id, Severity: severity, Finding: finding})
	}
	drop := func(fs TestSSLFindings, id string) TestSSLFindings {
		return slices.DeleteFunc(slices.Clone(fs), func(f TestSSLFinding) bool { return f.ID == id })
	}
	protocols := []string{"SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"}
	cases := []struct {
		name     string
		findings TestSSLFindings
		policy   Policy
		require  []string
		want     []string
	}{
		{"real compat mqtts", compat, Policy{AllowTLS12: true}, append(protocols, "CRIME_TLS", "secure_renego", "cert_keySize"), nil},
		{"real strict api", strictAPI, Policy{}, append(protocols, "CRIME_TLS", "secure_renego"), nil},
		{"real vulnerability scan", vulns, Policy{AllowTLS12: true}, []string{"heartbleed", "ROBOT", "LUCKY13"}, nil},
		{"compat judged as strict", compat, Policy{}, nil,
			[]string{"TLS1_2: offered, want not offered", "cipher-tls1_2_xc02c: TLS 1.2 suite on a strict listener"}},
		{"missing check", strictAPI, Policy{}, []string{"BREACH"}, []string{"reported nothing for BREACH"}},
		{"TLS 1.1 offered", set(strictAPI, "TLS1_1", "LOW", "offered (deprecated)"), Policy{}, nil,
			[]string{"TLS1_1: offered (deprecated), want not offered"}},
		{"SSLv3 offered", set(strictAPI, "SSLv3", "HIGH", "offered (NOT ok)"), Policy{}, nil, []string{"SSLv3: offered (NOT ok)"}},
		{"no TLS 1.3", set(strictAPI, "TLS1_3", "MEDIUM", "not offered"), Policy{}, nil, []string{"TLS1_3: not offered, want offered"}},
		{"CRIME", set(compat, "CRIME_TLS", "HIGH", "VULNERABLE (NOT ok)"), Policy{AllowTLS12: true}, nil,
			[]string{"CRIME_TLS: VULNERABLE (NOT ok) (HIGH)"}},
		{"insecure renegotiation", set(compat, "secure_renego", "HIGH", "Not supported / VULNERABLE (NOT ok)"), Policy{AllowTLS12: true}, nil,
			[]string{"secure_renego: Not supported / VULNERABLE"}},
		{"client renegotiation untestable is no finding", set(compat, "secure_client_renego", "WARN", "client x509-based authentication prevents this from being tested"),
			Policy{AllowTLS12: true}, nil, nil},
		{"CBC suite", set(compat, "cipher-tls1_2_xc024", "INFO", "TLS 1.2   xc024   ECDHE-ECDSA-AES256-SHA384     ECDH 253   AES      256      TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384"),
			Policy{AllowTLS12: true}, nil, []string{"TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384: CBC mode"}},
		{"RSA key exchange suite", set(compat, "cipher-tls1_2_x9d", "INFO", "TLS 1.2   x9d     AES256-GCM-SHA384                 RSA        AESGCM      256      TLS_RSA_WITH_AES_256_GCM_SHA384"),
			Policy{AllowTLS12: true}, nil, []string{"TLS_RSA_WITH_AES_256_GCM_SHA384: RSA key exchange"}},
		{"TLS 1.0 suite", set(compat, "cipher-tls1_xc009", "INFO", "TLS 1   xc009   ECDHE-ECDSA-AES128-SHA   ECDH 253   AES   128   TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
			Policy{AllowTLS12: true}, nil, []string{"cipher-tls1_xc009: suite offered with tls1"}},
		{"RSA key", set(compat, "cert_keySize", "OK", "RSA 2048 bits"), Policy{AllowTLS12: true}, nil, []string{"cert_keySize: RSA 2048 bits"}},
		{"SHA-1 signature", set(compat, "cert_signatureAlgorithm", "MEDIUM", "SHA1 with RSA"), Policy{AllowTLS12: true}, nil,
			[]string{"cert_signatureAlgorithm: SHA1 with RSA"}},
		{"unfinished", drop(compat, "scanTime"), Policy{AllowTLS12: true}, nil, []string{"did not finish"}},
		{"scan problem", set(compat, "scanProblem", "FATAL", "Can't connect"), Policy{AllowTLS12: true}, nil, []string{"could not scan"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.findings.Violations(tc.policy, tc.require...)
			if len(tc.want) == 0 && len(got) != 0 {
				t.Fatalf("violations %q, want none", got)
			}
			if !containsAll(got, tc.want...) {
				t.Fatalf("violations %q, want ones containing %q", got, tc.want)
			}
		})
	}
	for name, doc := range map[string]string{
		"not JSON":       "Fatal error: can't connect",
		"object":         `{"id":"x"}`,
		"no id":          `[{"severity":"OK","finding":"x"}]`,
		"bad severity":   `[{"id":"x","severity":"SEVERE","finding":"x"}]`,
		"wrong type":     `[{"id":1}]`,
		"trailing bytes": `[] []`,
	} {
		t.Run("refuses "+name, func(t *testing.T) {
			if fs, err := ParseTestSSLJSON([]byte(doc)); err == nil {
				t.Fatalf("parsed %+v, want an error", fs)
			}
		})
	}
}

func TestTestSSLSuiteName(t *testing.T) {
	for finding, want := range map[string]string{
		"TLS 1.2   xc02c   ECDHE-ECDSA-AES256-GCM-SHA384     ECDH 253   AESGCM      256      TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
		"TLS 1.2   xc024   ECDHE-ECDSA-AES256-SHA384     ECDH 253   AES      256":                                                     "ECDHE-ECDSA-AES256-SHA384",
		"":  "",
		"x": "x",
	} {
		if got := testsslSuiteName(finding); got != want {
			t.Errorf("testsslSuiteName(%q) = %q, want %q", finding, got, want)
		}
	}
}

// FuzzParseSSLScanXML feeds arbitrary bytes where sslscan's XML goes: no
// panic, and whatever parses can be judged.
func FuzzParseSSLScanXML(f *testing.F) {
	f.Add(readTestdata(f, "sslscan-strict.xml"))
	f.Add(readTestdata(f, "sslscan-compat.xml"))
	f.Add([]byte(`<document><ssltest host="h" port="1"><protocol type="ssl" version="2" enabled="1"/><cipher status="accepted" sslversion="TLSv1.0" cipher="AES128-SHA" id="0x002F"/></ssltest></document>`))
	f.Add([]byte(`<document><error>x</error></document>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseSSLScanXML(b)
		if err != nil {
			return
		}
		_ = r.Violations(Policy{})
		_ = r.Violations(Policy{AllowTLS12: true})
	})
}

// FuzzParseTestSSLJSON feeds arbitrary bytes where testssl.sh's JSON goes.
func FuzzParseTestSSLJSON(f *testing.F) {
	f.Add(readTestdata(f, "testssl-compat-mqtts.json"))
	f.Add(readTestdata(f, "testssl-strict-api.json"))
	f.Add([]byte(`[{"id":"cipher-tls1_2_x","severity":"INFO","finding":"x"},{"id":"cipher-_x00","severity":"OK","finding":"TLS 1.0 x0a"}]`))
	f.Add([]byte(`[{"id":"scanProblem","severity":"FATAL","finding":"no route"}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := ParseTestSSLJSON(b)
		if err != nil {
			return
		}
		_ = fs.Violations(Policy{}, "TLS1_3")
		_ = fs.Violations(Policy{AllowTLS12: true})
	})
}
