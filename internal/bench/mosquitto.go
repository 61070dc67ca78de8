package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/fileutil"
)

// ErrMosquittoNotFound means the mosquitto binary is not installed
// (Debian: apt-get install mosquitto).
var ErrMosquittoNotFound = errors.New("mosquitto not found; install it with `apt-get install mosquitto` (Debian) or give its path")

// DefaultMaxQueuedMessages is Mosquitto's per-client queue in the
// benchmark (its default, 1000, would drop the consumer's messages in the
// throughput scenario, where one client reads the whole fleet).
const DefaultMaxQueuedMessages = 1000000

// MosquittoOptions configures StartMosquitto.
type MosquittoOptions struct {
	// Binary is the mosquitto executable; default "mosquitto" on PATH,
	// then /usr/sbin/mosquitto (Debian's place, off a normal user's PATH).
	Binary string
	// Fleet supplies what Mosquitto must know of the devices: the CAs of
	// its data directory (to verify device certificates) and the consumer,
	// whose certificate also serves the readiness check. Required.
	Fleet *FleetDir
	// Dir holds the configuration, certificates, ACL and log; default a
	// new temporary directory (Proc.Dir), which the caller removes.
	Dir string
	// TLSVersion is Mosquitto's tls_version; default "tlsv1.3", the same
	// as Warden's strict profile.
	TLSVersion string
	// MaxQueuedMessages per client; default DefaultMaxQueuedMessages.
	MaxQueuedMessages int
	// Extra lines are appended to the configuration (after the listener,
	// so listener options apply to it).
	Extra []string
	// StartTimeout and StopTimeout as in WardenOptions.
	StartTimeout time.Duration
	StopTimeout  time.Duration
}

// FindMosquitto returns the path of the mosquitto binary, or an error
// wrapping ErrMosquittoNotFound.
func FindMosquitto(path string) (string, error) {
	if path != "" {
		p, err := exec.LookPath(path)
		if err != nil {
			return "", fmt.Errorf("bench: %s: %w (%v)", path, ErrMosquittoNotFound, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p, nil
	}
	if p, err := exec.LookPath("/usr/sbin/mosquitto"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("bench: %w", ErrMosquittoNotFound)
}

// mosquittoVersion runs `mosquitto -h` (which exits non-zero) for the
// version line.
func mosquittoVersion(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "-h").CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "mosquitto version "); ok {
			return v
		}
	}
	return ""
}

// StartMosquitto runs Mosquitto 2 as the seed documents configure it for
// device certificates, so that the comparison is with what a careful
// operator would deploy:
//
//   - one TLS listener on a free loopback port, require_certificate and
//     use_identity_as_username (the certificate's common name, the device
//     ID, is the username), tls_version tlsv1.3;
//   - an ACL giving each device its own subtree (pattern readwrite
//     private/%u/#) and the fleet's consumer read access to private/#;
//   - set_tcp_nodelay true (Go sets TCP_NODELAY on every connection, so
//     without it Mosquitto alone would batch small writes), persistence
//     false, max_connections -1, max_queued_messages raised (see
//     DefaultMaxQueuedMessages), and `user root` when run as root, since
//     Mosquitto otherwise drops to its own user, which cannot read the
//     key.
//
// The server certificate comes from a throwaway CA (WriteServerCert);
// Proc.ServerRoots is what clients must trust. cafile holds the Warden
// data directory's root and issuing CAs (WardenCABundle), because device
// certificates carry only the leaf. Mosquitto's log (and its output) go to
// Dir/mosquitto.log. It is ready when the consumer's certificate completes
// a TLS handshake and an MQTT CONNECT.
//
// Mosquitto from Debian 12 is linked with OpenSSL 3.0, which has no
// post-quantum key exchange: Proc.TLS says what was negotiated, and a fair
// handshake comparison starts Warden with ClassicKeyExchange as well.
func StartMosquitto(ctx context.Context, o MosquittoOptions) (*Proc, error) {
	if o.Fleet == nil {
		return nil, errors.New("bench: mosquitto: a provisioned fleet is required (its CAs and consumer)")
	}
	bin, err := FindMosquitto(o.Binary)
	if err != nil {
		return nil, err
	}
	sf, err := prepareServer("mosquitto", o.Fleet, o.Dir)
	if err != nil {
		return nil, err
	}
	probe, dir, caFile, sc := sf.probe, sf.dir, sf.caFile, sf.cert
	aclFile := filepath.Join(dir, "acl")
	if err := fileutil.WriteFileAtomic(aclFile, mosquittoACL(o.Fleet.Consumer), 0o644); err != nil {
		return nil, fmt.Errorf("bench: mosquitto: %w", err)
	}
	version := mosquittoVersion(ctx, bin)
	for attempt := 1; ; attempt++ {
		p, err := startMosquittoOnce(ctx, bin, dir, caFile, aclFile, sc, probe, o)
		if err == nil {
			p.Version = version
			return p, nil
		}
		if attempt == maxPortAttempts || p == nil || !logContains(p.LogPath, "Address already in use") {
			return nil, err
		}
	}
}

// mosquittoACL is the seed's ACL: each device its own subtree, the
// consumer every device's.
func mosquittoACL(consumer string) []byte {
	return []byte(`# Written by Warden's benchmark (internal/bench).
# Each device (username = its certificate's common name) may use its own
# subtree only.
pattern readwrite private/%u/#

# The benchmark's consumer reads every device's subtree.
user ` + consumer + `
topic read private/#
`)
}

// mosquittoConfig renders mosquitto.conf.
func mosquittoConfig(addr, caFile, aclFile, logFile string, sc ServerCert, o MosquittoOptions) ([]byte, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("bench: mosquitto: %w", err)
	}
	tlsVersion := o.TLSVersion
	if tlsVersion == "" {
		tlsVersion = "tlsv1.3"
	}
	queued := o.MaxQueuedMessages
	if queued <= 0 {
		queued = DefaultMaxQueuedMessages
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by Warden's benchmark (internal/bench) for one run.\n")
	fmt.Fprintf(&b, "# Device certificates as the seed documents configure them, tuned as a careful operator would.\n")
	fmt.Fprintf(&b, "per_listener_settings false\n")
	fmt.Fprintf(&b, "allow_anonymous false\n")
	fmt.Fprintf(&b, "acl_file %s\n", aclFile)
	fmt.Fprintf(&b, "persistence false\n")
	fmt.Fprintf(&b, "# Go clients and Warden set TCP_NODELAY; so must Mosquitto for a like comparison.\n")
	fmt.Fprintf(&b, "set_tcp_nodelay true\n")
	fmt.Fprintf(&b, "# The consumer reads the whole fleet: the default of 1000 would drop its messages.\n")
	fmt.Fprintf(&b, "max_queued_messages %d\n", queued)
	fmt.Fprintf(&b, "log_dest file %s\n", logFile)
	if os.Geteuid() == 0 {
		fmt.Fprintf(&b, "# Running as root: stay root, or Mosquitto drops to its own user, who cannot read the key.\n")
		fmt.Fprintf(&b, "user root\n")
	}
	fmt.Fprintf(&b, "\nlistener %s %s\n", port, host)
	fmt.Fprintf(&b, "max_connections -1\n")
	fmt.Fprintf(&b, "cafile %s\n", caFile)
	fmt.Fprintf(&b, "certfile %s\n", sc.CertFile)
	fmt.Fprintf(&b, "keyfile %s\n", sc.KeyFile)
	fmt.Fprintf(&b, "require_certificate true\n")
	fmt.Fprintf(&b, "use_identity_as_username true\n")
	fmt.Fprintf(&b, "tls_version %s\n", tlsVersion)
	for _, l := range o.Extra {
		if strings.ContainsAny(l, "\n\r") {
			return nil, fmt.Errorf("bench: mosquitto: an extra configuration line holds a line break: %q", l)
		}
		fmt.Fprintf(&b, "%s\n", l)
	}
	return b.Bytes(), nil
}

func startMosquittoOnce(ctx context.Context, bin, dir, caFile, aclFile string, sc ServerCert, probe tls.Certificate, o MosquittoOptions) (*Proc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	logFile := filepath.Join(dir, "mosquitto.log")
	conf, err := mosquittoConfig(addr, caFile, aclFile, logFile, sc, o)
	if err != nil {
		return nil, err
	}
	confPath := filepath.Join(dir, "mosquitto.conf")
	if err := fileutil.WriteFileAtomic(confPath, conf, 0o644); err != nil {
		return nil, fmt.Errorf("bench: mosquitto: %w", err)
	}
	// Through sh to raise the open-file limit to the hard limit first:
	// Mosquitto does not raise it itself, and a soft limit of 1024 would
	// refuse a large fleet. exec keeps the PID Mosquitto's.
	p, err := startProc(ctx, procSpec{
		name: "mosquitto", path: "/bin/sh",
		args: []string{"-c", `ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"`, bin, "-c", confPath},
		dir:  dir, env: childEnv(nil), logPath: logFile, stopTimeout: o.StopTimeout,
	})
	if err != nil {
		return nil, err
	}
	p.ConfigPath = confPath
	p.Addr = addr
	p.ServerCA, p.ServerCAPEM = sc.CAFile, sc.CAPEM
	roots, err := p.ServerRoots()
	if err != nil {
		return p, p.failStart(err)
	}
	clientID := o.Fleet.Consumer
	err = p.waitReady(ctx, o.StartTimeout, func(ctx context.Context) error {
		state, err := probeMQTT(ctx, addr, probe, roots, clientID)
		if err != nil {
			return err
		}
		p.TLS = describeTLS(state)
		return nil
	})
	if err != nil {
		return p, p.failStart(err)
	}
	return p, nil
}

// describeTLS names the protocol version and key exchange of a connection.
func describeTLS(cs tls.ConnectionState) string {
	return tls.VersionName(cs.Version) + ", " + cs.CurveID.String()
}

// probeMQTT connects with a client certificate and sends an MQTT 3.1.1
// CONNECT; a CONNACK that accepts it proves the TLS listener, the client
// CAs and the username mapping work.
func probeMQTT(ctx context.Context, addr string, cert tls.Certificate, roots *x509.CertPool, clientID string) (tls.ConnectionState, error) {
	d := tls.Dialer{Config: &tls.Config{
		MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: serverName,
		Certificates: []tls.Certificate{cert},
	}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	tc := c.(*tls.Conn)
	if _, err := tc.Write(mqttConnect(clientID)); err != nil {
		return tls.ConnectionState{}, fmt.Errorf("send CONNECT: %w", err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(tc, ack[:]); err != nil {
		return tls.ConnectionState{}, fmt.Errorf("read CONNACK (certificate refused?): %w", err)
	}
	if ack[0] != 0x20 || ack[1] != 0x02 {
		return tls.ConnectionState{}, fmt.Errorf("expected a CONNACK, got % x", ack)
	}
	if ack[3] != 0 {
		return tls.ConnectionState{}, fmt.Errorf("CONNECT refused with return code %d", ack[3])
	}
	_, _ = tc.Write([]byte{0xe0, 0x00}) // DISCONNECT
	return tc.ConnectionState(), nil
}

// mqttConnect encodes an MQTT 3.1.1 CONNECT with a clean session, a 60 s
// keep alive and the client ID (short enough for a one-byte remaining
// length: IDs here are at most 64 characters).
func mqttConnect(clientID string) []byte {
	var vh bytes.Buffer
	vh.Write([]byte{0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c})
	vh.Write([]byte{byte(len(clientID) >> 8), byte(len(clientID))})
	vh.WriteString(clientID)
	return append([]byte{0x10, byte(vh.Len())}, vh.Bytes()...)
}
