package tlsposture

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Policy is what one listener must look like to a scanner.
type Policy struct {
	// AllowTLS12 marks a listener on the compat profile: it may offer TLS
	// 1.2 (ECDHE with an AEAD only). A strict listener offers TLS 1.3 alone.
	AllowTLS12 bool
}

// Protocol names as sslscan prints them, oldest first. Every scan must
// report on each of them.
var sslscanProtocols = []string{"SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"}

// SSLScan is what `sslscan --xml=-` reported about one target.
type SSLScan struct {
	// Target is host:port as sslscan wrote it.
	Target string
	// Protocols maps a protocol name (SSLv2 ... TLSv1.3) to whether the
	// target accepted it.
	Protocols map[string]bool
	// Ciphers are the suites the target accepted.
	Ciphers []ScannedCipher
	// Renegotiation is nil when sslscan did not test it.
	Renegotiation *Renegotiation
	// Compression is nil when sslscan did not test it (an OpenSSL built
	// without zlib cannot), else whether the target compressed.
	Compression *bool
	// HeartbleedVulnerable lists the protocol versions sslscan found
	// vulnerable to Heartbleed.
	HeartbleedVulnerable []string
	// Certificates are the server certificates sslscan described.
	Certificates []ScannedCertificate
}

// ScannedCipher is one accepted suite.
type ScannedCipher struct {
	// Version is the protocol, e.g. TLSv1.2.
	Version string
	// Name is the suite's OpenSSL name (TLS 1.3 suites have their IANA
	// names there too).
	Name string
	// ID is the suite's code point.
	ID uint16
}

// Renegotiation is sslscan's finding about renegotiation.
type Renegotiation struct {
	Supported, Secure bool
}

// ScannedCertificate is a server certificate as sslscan described it.
type ScannedCertificate struct {
	SignatureAlgorithm string
	KeyType            string // "EC", "RSA", ...
	Curve              string // "prime256v1" for P-256
	Subject            string
	AltNames           string
}

type sslscanDoc struct {
	XMLName xml.Name      `xml:"document"`
	Tests   []sslscanTest `xml:"ssltest"`
	Errors  []string      `xml:"error"`
}

type sslscanTest struct {
	Host      string `xml:"host,attr"`
	Port      string `xml:"port,attr"`
	Protocols []struct {
		Type    string `xml:"type,attr"`
		Version string `xml:"version,attr"`
		Enabled string `xml:"enabled,attr"`
	} `xml:"protocol"`
	Renegotiation []struct {
		Supported string `xml:"supported,attr"`
		Secure    string `xml:"secure,attr"`
	} `xml:"renegotiation"`
	Compression []struct {
		Supported string `xml:"supported,attr"`
	} `xml:"compression"`
	Heartbleed []struct {
		Version    string `xml:"sslversion,attr"`
		Vulnerable string `xml:"vulnerable,attr"`
	} `xml:"heartbleed"`
	Ciphers []struct {
		Status  string `xml:"status,attr"`
		Version string `xml:"sslversion,attr"`
		Name    string `xml:"cipher,attr"`
		ID      string `xml:"id,attr"`
	} `xml:"cipher"`
	Certificates []struct {
		SignatureAlgorithm string `xml:"signature-algorithm"`
		PK                 struct {
			Type  string `xml:"type,attr"`
			Curve string `xml:"curve_name,attr"`
		} `xml:"pk"`
		Subject  string `xml:"subject"`
		AltNames string `xml:"altnames"`
	} `xml:"certificates>certificate"`
	Errors []string `xml:"error"`
}

// ParseSSLScanXML reads the XML sslscan writes with --xml=- about exactly
// one target. An <error> element, a second target or a malformed value is
// an error: a scan that went wrong must not pass as a clean one.
func ParseSSLScanXML(b []byte) (SSLScan, error) {
	var doc sslscanDoc
	d := xml.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&doc); err != nil {
		return SSLScan{}, fmt.Errorf("sslscan XML: %w", err)
	}
	if len(doc.Errors) > 0 {
		return SSLScan{}, fmt.Errorf("sslscan reported an error: %s", strings.TrimSpace(doc.Errors[0]))
	}
	if len(doc.Tests) != 1 {
		return SSLScan{}, fmt.Errorf("sslscan XML: %d targets, want exactly one", len(doc.Tests))
	}
	st := doc.Tests[0]
	if len(st.Errors) > 0 {
		return SSLScan{}, fmt.Errorf("sslscan reported an error about %s:%s: %s", st.Host, st.Port, strings.TrimSpace(st.Errors[0]))
	}
	r := SSLScan{Target: st.Host + ":" + st.Port, Protocols: map[string]bool{}}
	for _, p := range st.Protocols {
		name, err := protocolName(p.Type, p.Version)
		if err != nil {
			return SSLScan{}, err
		}
		on, err := flag("protocol "+name+" enabled", p.Enabled)
		if err != nil {
			return SSLScan{}, err
		}
		if _, dup := r.Protocols[name]; dup {
			return SSLScan{}, fmt.Errorf("sslscan XML: protocol %s reported twice", name)
		}
		r.Protocols[name] = on
	}
	for _, rn := range st.Renegotiation {
		sup, err := flag("renegotiation supported", rn.Supported)
		if err != nil {
			return SSLScan{}, err
		}
		sec, err := flag("renegotiation secure", rn.Secure)
		if err != nil {
			return SSLScan{}, err
		}
		r.Renegotiation = &Renegotiation{Supported: sup, Secure: sec}
	}
	for _, c := range st.Compression {
		on, err := flag("compression supported", c.Supported)
		if err != nil {
			return SSLScan{}, err
		}
		r.Compression = &on
	}
	for _, h := range st.Heartbleed {
		vuln, err := flag("heartbleed vulnerable", h.Vulnerable)
		if err != nil {
			return SSLScan{}, err
		}
		if vuln {
			r.HeartbleedVulnerable = append(r.HeartbleedVulnerable, h.Version)
		}
	}
	for _, c := range st.Ciphers {
		if c.Status != "accepted" && c.Status != "preferred" {
			return SSLScan{}, fmt.Errorf("sslscan XML: cipher %q has status %q, want accepted or preferred", c.Name, c.Status)
		}
		if c.Name == "" || c.Version == "" {
			return SSLScan{}, errors.New("sslscan XML: a cipher without a name or protocol version")
		}
		id, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(c.ID), "0x"), 16, 16)
		if err != nil || !strings.HasPrefix(strings.ToLower(c.ID), "0x") {
			return SSLScan{}, fmt.Errorf("sslscan XML: cipher %q has id %q, want 0x and four hex digits", c.Name, c.ID)
		}
		r.Ciphers = append(r.Ciphers, ScannedCipher{Version: c.Version, Name: c.Name, ID: uint16(id)})
	}
	for _, c := range st.Certificates {
		r.Certificates = append(r.Certificates, ScannedCertificate{
			SignatureAlgorithm: strings.TrimSpace(c.SignatureAlgorithm),
			KeyType:            c.PK.Type,
			Curve:              c.PK.Curve,
			Subject:            strings.TrimSpace(c.Subject),
			AltNames:           strings.TrimSpace(c.AltNames),
		})
	}
	return r, nil
}

func protocolName(typ, version string) (string, error) {
	switch {
	case typ == "ssl" && (version == "2" || version == "3"):
		return "SSLv" + version, nil
	case typ == "tls" && (version == "1.0" || version == "1.1" || version == "1.2" || version == "1.3"):
		return "TLSv" + version, nil
	}
	return "", fmt.Errorf("sslscan XML: unknown protocol type=%q version=%q", typ, version)
}

func flag(what, v string) (bool, error) {
	switch v {
	case "0":
		return false, nil
	case "1":
		return true, nil
	}
	return false, fmt.Errorf("sslscan XML: %s is %q, want 0 or 1", what, v)
}

// Violations lists every way the scan breaks the policy, or shows that the
// scan saw too little to judge; empty means the listener passes.
func (r SSLScan) Violations(p Policy) []string {
	var v []string
	for _, name := range sslscanProtocols {
		on, ok := r.Protocols[name]
		switch {
		case !ok:
			v = append(v, "sslscan did not report on "+name)
		case name == "TLSv1.3" && !on:
			v = append(v, "TLSv1.3 is not offered")
		case name == "TLSv1.2" && on && !p.AllowTLS12:
			v = append(v, "TLSv1.2 is offered on a strict listener")
		case name != "TLSv1.3" && name != "TLSv1.2" && on:
			v = append(v, name+" is offered")
		}
	}
	if len(r.Ciphers) == 0 {
		v = append(v, "sslscan saw no accepted cipher suite: the scan did not get through")
	}
	for _, c := range r.Ciphers {
		if c.Version == "TLSv1.2" && !p.AllowTLS12 {
			v = append(v, fmt.Sprintf("%s accepted with TLSv1.2 on a strict listener", c.Name))
		}
		if c.Version != "TLSv1.2" && c.Version != "TLSv1.3" {
			v = append(v, fmt.Sprintf("%s accepted with %s", c.Name, c.Version))
		}
		if why := suiteProblem(c.Name); why != "" {
			v = append(v, fmt.Sprintf("%s (%s, 0x%04X): %s", c.Name, c.Version, c.ID, why))
		}
	}
	if rn := r.Renegotiation; rn != nil && rn.Supported && !rn.Secure {
		v = append(v, "insecure renegotiation is supported")
	}
	if r.Compression != nil && *r.Compression {
		v = append(v, "TLS compression is supported (CRIME)")
	}
	for _, ver := range r.HeartbleedVulnerable {
		v = append(v, "vulnerable to Heartbleed over "+ver)
	}
	if len(r.Certificates) == 0 {
		v = append(v, "sslscan saw no server certificate")
	}
	for _, c := range r.Certificates {
		if c.KeyType != "EC" || c.Curve != "prime256v1" {
			v = append(v, fmt.Sprintf("server certificate %q has a %s key on %q, want EC on prime256v1 (P-256)", c.Subject, c.KeyType, c.Curve))
		}
		if c.SignatureAlgorithm != "ecdsa-with-SHA256" {
			v = append(v, fmt.Sprintf("server certificate %q is signed with %s, want ecdsa-with-SHA256", c.Subject, c.SignatureAlgorithm))
		}
	}
	return v
}

// suiteProblem says what is wrong with a cipher suite, given by its
// OpenSSL or its IANA name, or "" when it is forward-secret ECDHE with an
// AEAD (or a TLS 1.3 suite, which always is).
func suiteProblem(name string) string {
	n := strings.ToUpper(strings.TrimSpace(name))
	switch {
	case n == "":
		return "no suite name"
	case strings.HasPrefix(n, "TLS_AES_"), strings.HasPrefix(n, "TLS_CHACHA20_"):
		return "" // TLS 1.3: ECDHE or (EC)DHE-PSK with an AEAD, always
	case strings.HasPrefix(n, "TLS_"), strings.HasPrefix(n, "SSL_"):
		kex, bulk, ok := strings.Cut(n[4:], "_WITH_")
		if !ok {
			return "unrecognised IANA suite name"
		}
		return kexBulkProblem(kex == "ECDHE_ECDSA" || kex == "ECDHE_RSA", kex == "RSA", isAEAD(bulk), strings.Contains(bulk, "_CBC"))
	}
	// OpenSSL names: the key exchange is the first part, none for RSA.
	ecdhe := strings.HasPrefix(n, "ECDHE-")
	rsa := !ecdhe && !strings.HasPrefix(n, "DHE-") && !strings.HasPrefix(n, "EDH-") &&
		!strings.HasPrefix(n, "ADH-") && !strings.HasPrefix(n, "AECDH-") && !strings.Contains(n, "PSK") && !strings.HasPrefix(n, "SRP-")
	return kexBulkProblem(ecdhe, rsa, isAEAD(n), strings.Contains(n, "CBC") || !isAEAD(n) && !strings.Contains(n, "RC4") && !strings.Contains(n, "NULL"))
}

func isAEAD(s string) bool {
	return strings.Contains(s, "GCM") || strings.Contains(s, "CHACHA20") && strings.Contains(s, "POLY1305") || strings.Contains(s, "CCM")
}

func kexBulkProblem(ecdhe, rsa, aead, cbc bool) string {
	var why []string
	switch {
	case rsa:
		why = append(why, "RSA key exchange (no forward secrecy)")
	case !ecdhe:
		why = append(why, "not an ECDHE key exchange")
	}
	switch {
	case cbc:
		why = append(why, "CBC mode")
	case !aead:
		why = append(why, "not an AEAD cipher")
	}
	return strings.Join(why, ", ")
}

// TestSSLFindings is what testssl.sh reported about one target.
type TestSSLFindings []TestSSLFinding

// TestSSLFinding is one line of testssl.sh's flat JSON (--jsonfile).
type TestSSLFinding struct {
	ID       string `json:"id"`
	IP       string `json:"ip"`
	Port     string `json:"port"`
	Severity string `json:"severity"`
	Finding  string `json:"finding"`
}

// testsslSeverities are the severities testssl.sh 3.0 writes.
var testsslSeverities = []string{"DEBUG", "INFO", "OK", "LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN", "FATAL"}

// ParseTestSSLJSON reads the flat JSON array testssl.sh writes with
// --jsonfile. An unknown severity or a finding without an id is an error.
func ParseTestSSLJSON(b []byte) (TestSSLFindings, error) {
	var fs TestSSLFindings
	if err := json.Unmarshal(b, &fs); err != nil {
		return nil, fmt.Errorf("testssl.sh JSON: %w", err)
	}
	for i, f := range fs {
		if f.ID == "" {
			return nil, fmt.Errorf("testssl.sh JSON: finding %d has no id", i)
		}
		if !slices.Contains(testsslSeverities, f.Severity) {
			return nil, fmt.Errorf("testssl.sh JSON: finding %s has severity %q", f.ID, f.Severity)
		}
	}
	return fs, nil
}

// testsslVulnerabilities are the ids of testssl.sh's vulnerability checks
// (-U, -R, -C): each must come out OK, INFO or WARN (WARN: could not be
// tested, e.g. client renegotiation behind a required client
// certificate), and never say VULNERABLE.
var testsslVulnerabilities = []string{
	"heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego", "secure_client_renego", "CRIME_TLS", "BREACH",
	"POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN", "LOGJAM", "LOGJAM-common_primes", "BEAST", "LUCKY13",
	"winshock", "RC4",
}

// Violations lists every way the findings break the policy. require names finding ids that must be present (the checks that
// were asked for): a missing one means the check did not run.
func (fs TestSSLFindings) Violations(p Policy, require ...string) []string {
	var v []string
	byID := map[string]TestSSLFinding{}
	for _, f := range fs {
		byID[f.ID] = f
		if f.Severity == "FATAL" || f.ID == "scanProblem" {
			v = append(v, fmt.Sprintf("testssl.sh could not scan: %s: %s", f.ID, f.Finding))
		}
	}
	for _, id := range require {
		if _, ok := byID[id]; !ok {
			v = append(v, "testssl.sh reported nothing for "+id)
		}
	}
	if _, ok := byID["scanTime"]; !ok {
		v = append(v, "testssl.sh did not finish (no scanTime)")
	}
	notOffered := func(id string) {
		if f, ok := byID[id]; ok && !strings.HasPrefix(f.Finding, "not offered") {
			v = append(v, fmt.Sprintf("%s: %s, want not offered", id, f.Finding))
		}
	}
	for _, id := range []string{"SSLv2", "SSLv3", "TLS1", "TLS1_1"} {
		notOffered(id)
	}
	if !p.AllowTLS12 {
		notOffered("TLS1_2")
	}
	if f, ok := byID["TLS1_3"]; ok && !strings.HasPrefix(f.Finding, "offered") {
		v = append(v, "TLS1_3: "+f.Finding+", want offered")
	}
	for _, id := range testsslVulnerabilities {
		f, ok := byID[id]
		if !ok {
			continue
		}
		if !slices.Contains([]string{"OK", "INFO", "WARN"}, f.Severity) || strings.Contains(f.Finding, "VULNERABLE") {
			v = append(v, fmt.Sprintf("%s: %s (%s)", id, f.Finding, f.Severity))
		}
	}
	if f, ok := byID["cert_keySize"]; ok && f.Finding != "EC 256 bits" {
		v = append(v, "cert_keySize: "+f.Finding+", want EC 256 bits")
	}
	if f, ok := byID["cert_signatureAlgorithm"]; ok && f.Finding != "ECDSA with SHA256" {
		v = append(v, "cert_signatureAlgorithm: "+f.Finding+", want ECDSA with SHA256")
	}
	for _, f := range fs {
		proto, ok := testsslCipherProtocol(f.ID)
		if !ok {
			continue
		}
		switch {
		case proto == "tls1_2" && !p.AllowTLS12:
			v = append(v, fmt.Sprintf("%s: TLS 1.2 suite on a strict listener: %s", f.ID, f.Finding))
		case proto != "tls1_2" && proto != "tls1_3":
			v = append(v, fmt.Sprintf("%s: suite offered with %s: %s", f.ID, proto, f.Finding))
		}
		if why := suiteProblem(testsslSuiteName(f.Finding)); why != "" {
			v = append(v, fmt.Sprintf("%s: %s: %s", f.ID, strings.Join(strings.Fields(f.Finding), " "), why))
		}
	}
	return v
}

// testsslCipherProtocol reads the protocol out of a per-protocol cipher
// finding id, "cipher-tls1_2_xc02c" -> "tls1_2".
func testsslCipherProtocol(id string) (string, bool) {
	rest, ok := strings.CutPrefix(id, "cipher-")
	if !ok {
		return "", false
	}
	i := strings.LastIndex(rest, "_x")
	if i <= 0 {
		return "", false
	}
	return rest[:i], true
}

// testsslSuiteName picks the suite name out of a cipher finding such as
// "TLS 1.2   xc02c   ECDHE-ECDSA-AES256-GCM-SHA384   ECDH 253   AESGCM
// 256   TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": the IANA name at the end
// when there is one, else the OpenSSL name after the hex code.
func testsslSuiteName(finding string) string {
	f := strings.Fields(finding)
	if len(f) == 0 {
		return ""
	}
	if last := f[len(f)-1]; strings.HasPrefix(last, "TLS_") || strings.HasPrefix(last, "SSL_") {
		return last
	}
	for i, w := range f {
		if len(w) > 1 && w[0] == 'x' && i+1 < len(f) {
			if _, err := strconv.ParseUint(w[1:], 16, 32); err == nil {
				return f[i+1]
			}
		}
	}
	return f[len(f)-1]
}
