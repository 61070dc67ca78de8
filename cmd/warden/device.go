package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/api"
	"github.com/warden-iot/warden/internal/apiclient"
	"github.com/warden-iot/warden/internal/app"
	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/monitor"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

func (c *cli) deviceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Provision, list and manage devices",
		Long: `Device commands act on the running server through its admin socket when
'warden serve' runs on the same data directory, and on the data directory
directly otherwise.`,
	}
	cmd.AddCommand(c.deviceAddCmd(), c.deviceProvisionCmd(), c.deviceSignCSRCmd(), c.deviceListCmd(), c.deviceShowCmd(),
		c.deviceStateCmd("disable", "Refuse a device's connections until it is enabled again (cuts it now)", true),
		c.deviceStateCmd("enable", "Allow a disabled device to connect again", false),
		c.deviceStateCmd("revoke", "Revoke a device for good: its certificates go on the CRL and it is cut now", true),
		c.deviceReleaseCmd(),
		c.deviceTagCmd(), c.deviceRekeyCmd(), c.devicePreregisterCmd(), c.deviceUnregisterCmd(), c.deviceEnrollmentsCmd(),
	)
	return cmd
}

// tagFlag parses repeated --tag k=v.
func parseTags(kvs []string) (map[string]string, error) {
	tags := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--tag %q: want key=value", kv)
		}
		tags[k] = v
	}
	return tags, nil
}

// keyMaterial is a freshly generated device key and its CSR. The key exists
// only in memory until it is written where the operator asked.
type keyMaterial struct {
	key    []byte
	csrDER []byte
}

func newKeyMaterial(id, format string) (keyMaterial, error) {
	k, err := pki.GenerateKey()
	if err != nil {
		return keyMaterial{}, err
	}
	csr, err := pki.CreateCSR(k, id)
	if err != nil {
		return keyMaterial{}, err
	}
	enc, err := pki.EncodePrivateKey(k, format)
	if err != nil {
		return keyMaterial{}, err
	}
	return keyMaterial{key: enc, csrDER: csr}, nil
}

func keyFileName(id, format string) string {
	switch format {
	case "der":
		return id + ".key.der"
	case "raw":
		return id + ".key.raw"
	}
	return id + ".key"
}

// provisioner issues, delivers and registers devices, in that order:
// a device is registered only after its key and certificate were delivered,
// so a crash can leave an unused key file but never a registered device
// without its key.
type provisioner struct {
	svc       admin.Service
	rootPEM   []byte
	outDir    string
	format    string
	keyStdout bool
	execCmd   string
}

func (c *cli) rootPEM(cfg *config.Config) ([]byte, error) {
	b, err := os.ReadFile(app.RootCertPath(cfg))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no root certificate in %s; run `warden init` or `warden serve` first", app.ErrNotInitialized, cfg.Paths().Data)
	}
	return b, err
}

// provisionOne runs the whole sequence for one device.
func (c *cli) provisionOne(ctx context.Context, p *provisioner, spec registry.DeviceSpec) error {
	km, err := newKeyMaterial(spec.ID, p.format)
	if err != nil {
		return err
	}
	issued, err := p.svc.IssueDevice(ctx, spec, km.csrDER)
	if err != nil {
		return err
	}
	var written []string
	undo := func() {
		for _, f := range written {
			_ = os.Remove(f)
		}
	}
	switch {
	case p.execCmd != "":
		if err := c.runHook(ctx, p.execCmd, spec.ID, km.key, issued.CertificatePEM, p.rootPEM); err != nil {
			return fmt.Errorf("device %s: %w; nothing was registered for it", spec.ID, err)
		}
	default:
		certPath := filepath.Join(p.outDir, spec.ID+".crt")
		if err := fileutil.WriteFileAtomic(certPath, []byte(issued.CertificatePEM), 0o644); err != nil {
			return err
		}
		written = append(written, certPath)
		if p.keyStdout {
			if _, err := c.out.Write(km.key); err != nil {
				undo()
				return fmt.Errorf("write the key to standard output: %w; nothing was registered", err)
			}
		} else {
			keyPath := filepath.Join(p.outDir, keyFileName(spec.ID, p.format))
			if err := fileutil.WriteFileAtomic(keyPath, km.key, 0o600); err != nil {
				undo()
				return err
			}
			written = append(written, keyPath)
		}
	}
	if _, err := p.svc.RegisterDevice(ctx, spec, km.csrDER, issued.CertificatePEM); err != nil {
		undo()
		return fmt.Errorf("device %s: register: %w", spec.ID, err)
	}
	return nil
}

// runHook runs the factory's programming command for one device with the
// key on its standard input.
func (c *cli) runHook(ctx context.Context, command, id string, key []byte, certPEM string, rootPEM []byte) error {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(),
		config.EnvDeviceID+"="+id,
		config.EnvDeviceCert+"="+certPEM,
		config.EnvCACert+"="+string(rootPEM),
	)
	cmd.Stdin = bytes.NewReader(key)
	cmd.Stdout = c.err // the command's chatter must not mix with our report
	cmd.Stderr = c.err
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("--exec command failed (%v)", err)
	}
	return nil
}

// openIssuing prepares a command that issues credentials: the service to
// act on, the root certificate, and (when outDir is set) outDir/ca.crt
// written for the device or service to pin.
func (c *cli) openIssuing(cmd *cobra.Command, outDir string) (admin.Service, []byte, func(), error) {
	cfg, log, err := c.load(cmd)
	if err != nil {
		return nil, nil, nil, err
	}
	root, err := c.rootPEM(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	svc, done, err := c.service(cmd.Context(), cfg, log)
	if err != nil {
		return nil, nil, nil, err
	}
	if outDir != "" {
		if err := writeCA(outDir, root); err != nil {
			done()
			return nil, nil, nil, err
		}
	}
	return svc, root, done, nil
}

func writeCA(outDir string, rootPEM []byte) error {
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", outDir, err)
	}
	return fileutil.WriteFileAtomic(filepath.Join(outDir, "ca.crt"), rootPEM, 0o644)
}

func (c *cli) deviceAddCmd() *cobra.Command {
	var model, outDir, format, envSuite string
	var tags []string
	var keyStdout, asJSON, envRequired bool
	cmd := &cobra.Command{
		Use:   "add ID --out DIR",
		Short: "Generate a key for one device, issue its certificate and register it",
		Long: `add generates an ECDSA P-256 key in memory, builds a CSR, issues the
certificate (CN = ID, URI SAN urn:warden:device:ID) and registers the device.
It writes DIR/ID.crt, DIR/ca.crt (the root the device must pin) and the key:
DIR/ID.key (mode 0600) or, with --key-to-stdout, standard output only, so a
factory can pipe it to the programmer and the key never touches a disk.

Key formats: pem (PKCS#8 PEM, default), der (PKCS#8 DER), raw (the 32-byte
private scalar, for devices that keep the key in a fuse region).

Warden keeps the CSR and the certificate, never the private key.

--envelope[=SUITE] also makes it an envelope device (docs/envelope.md), for
devices that cannot do TLS: Warden generates a 16-byte master secret, keeps
it sealed, and writes it once into the device bundle: DIR/ID.envelope.json
(what the Go SDK loads), DIR/ID.envelope.bin (the raw secret) and
DIR/ID.envelope.h (a C header), all mode 0600. Suites: ccm-8 (default),
legacy-cbc-hmac, sign-p256 (signed with the device's certificate key; no
secret). --envelope-required makes the device seal its uplinks even over TLS.`,
		Example: `  warden device add 0badf00d --model sensor-v2 --tag site=berlin --out ./devices
  warden device add 0badf00d --out ./devices --envelope --envelope-required
  warden device add 0badf00d --out ./devices --key-format raw --key-to-stdout | programmer --write-key -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := identity.ValidateDeviceID(id); err != nil {
				return err
			}
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			svc, root, done, err := c.openIssuing(cmd, outDir)
			if err != nil {
				return err
			}
			defer done()
			if envSuite != "" {
				if _, err := envelope.ParseSuite(envSuite); err != nil {
					return fmt.Errorf("--envelope: %w", err)
				}
			}
			p := &provisioner{svc: svc, rootPEM: root, outDir: outDir, format: format, keyStdout: keyStdout}
			if err := c.provisionOne(cmd.Context(), p, registry.DeviceSpec{ID: id, Model: model, Tags: t}); err != nil {
				return err
			}
			if envSuite != "" {
				b, err := svc.EnableEnvelope(cmd.Context(), id, envSuite, envRequired)
				if err != nil {
					return fmt.Errorf("device %s is registered, but enabling its envelope failed: %w", id, err)
				}
				files, err := writeEnvelopeBundle(outDir, b)
				clear(b.Secret)
				if err != nil {
					return fmt.Errorf("device %s has an envelope key but its bundle could not be written (%w); revoke it and add it again", id, err)
				}
				fmt.Fprintf(c.err, "Envelope (%s, epoch %d%s): %s\n", b.Suite, b.Epoch, map[bool]string{true: ", required over TLS"}[b.Required], strings.Join(files, ", "))
			}
			report := c.out
			if keyStdout {
				report = c.err
			}
			if asJSON && !keyStdout {
				return c.printJSON(map[string]string{"id": id, "certificate": filepath.Join(outDir, id+".crt"), "key": filepath.Join(outDir, keyFileName(id, format)), "ca": filepath.Join(outDir, "ca.crt")})
			}
			keyWhere := filepath.Join(outDir, keyFileName(id, format))
			if keyStdout {
				keyWhere = "standard output"
			}
			fmt.Fprintf(report, "Registered device %s\n  certificate  %s\n  key          %s\n  root to pin  %s\n", id, filepath.Join(outDir, id+".crt"), keyWhere, filepath.Join(outDir, "ca.crt"))
			return nil
		},
	}
	cmd.Flags().StringVar(&model, "model", "", "device model (used by rollouts and monitoring)")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag key=value (repeatable)")
	cmd.Flags().StringVar(&outDir, "out", "", "directory for ID.crt, ID.key and ca.crt")
	cmd.Flags().StringVar(&format, "key-format", "pem", "key encoding: pem, der or raw")
	cmd.Flags().BoolVar(&keyStdout, "key-to-stdout", false, "write the private key to standard output instead of a file")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().StringVar(&envSuite, "envelope", "", "make it an envelope device with this suite: ccm-8, legacy-cbc-hmac or sign-p256")
	cmd.Flags().Lookup("envelope").NoOptDefVal = "ccm-8"
	cmd.Flags().BoolVar(&envRequired, "envelope-required", false, "the device must seal its uplinks even over TLS")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// writeEnvelopeBundle writes the envelope secret once, in the three forms a
// device build may want, each mode 0600.
func writeEnvelopeBundle(dir string, b admin.EnvelopeBundle) ([]string, error) {
	type bundleJSON struct {
		DeviceID  string `json:"device_id"`
		Suite     string `json:"suite"`
		Epoch     uint32 `json:"epoch"`
		SecretHex string `json:"secret_hex,omitempty"`
		Required  bool   `json:"required"`
	}
	js, err := json.MarshalIndent(bundleJSON{b.DeviceID, b.Suite, b.Epoch, hex.EncodeToString(b.Secret), b.Required}, "", "  ")
	if err != nil {
		return nil, err
	}
	base := filepath.Join(dir, b.DeviceID+".envelope")
	files := []string{base + ".json"}
	if err := fileutil.WriteFileAtomic(base+".json", append(js, '\n'), 0o600); err != nil {
		return nil, err
	}
	if len(b.Secret) > 0 {
		files = append(files, base+".bin")
		if err := fileutil.WriteFileAtomic(base+".bin", b.Secret, 0o600); err != nil {
			return nil, err
		}
	}
	files = append(files, base+".h")
	return files, fileutil.WriteFileAtomic(base+".h", envelopeHeader(b), 0o600)
}

// envelopeHeader renders the bundle as a C header for firmware builds.
func envelopeHeader(b admin.EnvelopeBundle) []byte {
	suite, _ := envelope.ParseSuite(b.Suite)
	guard := "WARDEN_ENVELOPE_" + strings.ToUpper(strings.NewReplacer("-", "_").Replace(b.DeviceID)) + "_H"
	var w strings.Builder
	fmt.Fprintf(&w, "/* Warden envelope bundle for device %s (docs/envelope.md).\n", b.DeviceID)
	fmt.Fprintf(&w, " * Generated by `warden device add --envelope`. It holds the master secret:\n")
	fmt.Fprintf(&w, " * keep it out of version control and off shared build machines. */\n")
	fmt.Fprintf(&w, "#ifndef %s\n#define %s\n\n", guard, guard)
	fmt.Fprintf(&w, "#define WARDEN_DEVICE_ID \"%s\"\n", b.DeviceID)
	fmt.Fprintf(&w, "#define WARDEN_ENVELOPE_SUITE %d /* %s */\n", suite, b.Suite)
	fmt.Fprintf(&w, "#define WARDEN_ENVELOPE_EPOCH %du\n", b.Epoch)
	fmt.Fprintf(&w, "#define WARDEN_ENVELOPE_REQUIRED %d\n", map[bool]int{true: 1}[b.Required])
	if len(b.Secret) > 0 {
		fmt.Fprintf(&w, "\nstatic const unsigned char warden_master_secret[%d] = {", len(b.Secret))
		for i, x := range b.Secret {
			if i%8 == 0 {
				w.WriteString("\n    ")
			}
			fmt.Fprintf(&w, "0x%02x,", x)
			if i%8 != 7 {
				w.WriteString(" ")
			}
		}
		w.WriteString("\n};\n")
	}
	fmt.Fprintf(&w, "\n#endif /* %s */\n", guard)
	return []byte(w.String())
}

func (c *cli) deviceRekeyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rekey ID",
		Short: "Move an envelope device to a new key epoch",
		Long: `rekey gives an envelope device a fresh master secret. The running server
sends it to the device sealed under the current one (channel _rekey, QoS 1,
so an offline device with a persistent session gets it when it returns);
the old key stays accepted until the device's first message under the new
epoch confirms the switch. Running it again while a rekey is pending resends
the same new key. It needs 'warden serve' running on the data directory.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			epoch, err := svc.Rekey(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Sent epoch %d to device %s; the old key stays valid until the device uses the new one.\n", epoch, args[0])
			return nil
		},
	}
}

func (c *cli) deviceProvisionCmd() *cobra.Command {
	var model, outDir, format, execCmd string
	var tags []string
	var count int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "provision --count N (--out DIR | --exec CMD)",
		Short: "Provision many devices with generated 32-bit hex IDs",
		Long: `provision creates N devices with random 8-hex-digit IDs. For each one it
generates a key, issues the certificate, delivers both, and only then
registers the device, printing its ID when it is done. If the process is
killed, every device it printed is fully registered and has its key; the
one in progress is not registered.

With --out DIR each device gets DIR/ID.crt and DIR/ID.key (mode 0600).
With --exec CMD, CMD runs once per device through /bin/sh with the key on
its standard input and WARDEN_DEVICE_ID, WARDEN_DEVICE_CERT (PEM) and
WARDEN_CA_CERT (PEM) in its environment; the key touches no disk. When CMD
fails, provisioning stops and nothing is registered for that device.`,
		Example: `  warden device provision --count 100 --model sensor-v2 --out ./batch-42
  warden device provision --count 50 --exec 'openocd -f board.cfg -c "program_key $WARDEN_DEVICE_ID"'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if count < 1 {
				return errors.New("--count must be at least 1")
			}
			if (outDir == "") == (execCmd == "") {
				return errors.New("give exactly one of --out DIR or --exec CMD")
			}
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			svc, root, done, err := c.openIssuing(cmd, outDir)
			if err != nil {
				return err
			}
			defer done()
			p := &provisioner{svc: svc, rootPEM: root, outDir: outDir, format: format, execCmd: execCmd}
			var bar *progressbar.ProgressBar
			if f, ok := c.err.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				bar = progressbar.NewOptions(count, progressbar.OptionSetWriter(c.err), progressbar.OptionSetDescription("provisioning"),
					progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(true), progressbar.OptionClearOnFinish())
			}
			var ids []string
			for len(ids) < count {
				if err := cmd.Context().Err(); err != nil {
					return fmt.Errorf("interrupted after %d of %d devices: %w", len(ids), count, err)
				}
				id, err := identity.NewDeviceID()
				if err != nil {
					return err
				}
				err = c.provisionOne(cmd.Context(), p, registry.DeviceSpec{ID: id, Model: model, Tags: t})
				if errors.Is(err, store.ErrConflict) {
					continue // a 32-bit ID collided with an existing device; draw again
				}
				if err != nil {
					return fmt.Errorf("%w\n%d of %d devices were provisioned before this one", err, len(ids), count)
				}
				ids = append(ids, id)
				if !asJSON {
					fmt.Fprintln(c.out, id) // the "done" report; one line per registered device
				}
				if bar != nil {
					_ = bar.Add(1)
				}
			}
			if asJSON {
				return c.printJSON(map[string]any{"provisioned": ids, "out": outDir})
			}
			fmt.Fprintf(c.err, "Provisioned %d devices.\n", len(ids))
			return nil
		},
	}
	cmd.Flags().IntVar(&count, "count", 0, "number of devices")
	cmd.Flags().StringVar(&model, "model", "", "device model")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag key=value for every device (repeatable)")
	cmd.Flags().StringVar(&outDir, "out", "", "directory for the keys and certificates")
	cmd.Flags().StringVar(&execCmd, "exec", "", "command run per device with the key on its standard input")
	cmd.Flags().StringVar(&format, "key-format", "pem", "key encoding: pem, der or raw")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the provisioned IDs as JSON at the end")
	return cmd
}

func (c *cli) deviceSignCSRCmd() *cobra.Command {
	var csrFile, id, out, model string
	var tags []string
	cmd := &cobra.Command{
		Use:   "sign-csr --csr FILE [--id ID] --out FILE",
		Short: "Register a device whose key was generated on the device, from its CSR",
		Long: `sign-csr issues a certificate for a CSR made on the device (the key never
leaves it) and registers the device. The CSR must be ECDSA P-256, its
signature must verify and its common name must equal the device ID (--id,
or taken from the CSR when --id is not given).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := os.ReadFile(csrFile)
			if err != nil {
				return fmt.Errorf("read CSR: %w", err)
			}
			csr, err := pki.ParseCSR(data)
			if err != nil {
				return fmt.Errorf("%s: %w", csrFile, err)
			}
			if id == "" {
				id = csr.Subject.CommonName
			}
			if err := identity.ValidateDeviceID(id); err != nil {
				return err
			}
			if csr.Subject.CommonName != id {
				return fmt.Errorf("CSR common name %q does not match device ID %q", csr.Subject.CommonName, id)
			}
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			if _, err := os.Stat(out); err == nil {
				return fmt.Errorf("%s exists; refusing to overwrite it", out)
			}
			issued, err := svc.AddDevice(cmd.Context(), registry.DeviceSpec{ID: id, Model: model, Tags: t}, csr.Raw)
			if err != nil {
				return err
			}
			if err := fileutil.WriteFileAtomic(out, []byte(issued.CertificatePEM), 0o644); err != nil {
				return fmt.Errorf("device %s is registered but its certificate could not be written (%w); get it with `warden device show %s --json`", id, err, id)
			}
			fmt.Fprintf(c.out, "Registered device %s; certificate written to %s\n", id, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&csrFile, "csr", "", "CSR file (PEM or DER)")
	cmd.Flags().StringVar(&id, "id", "", "device ID (default: the CSR's common name)")
	cmd.Flags().StringVar(&out, "out", "", "file to write the certificate to (PEM)")
	cmd.Flags().StringVar(&model, "model", "", "device model")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag key=value (repeatable)")
	_ = cmd.MarkFlagRequired("csr")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// JSON shapes of the listing commands: stable snake_case field names.
type deviceJSON struct {
	ID          string            `json:"id"`
	Model       string            `json:"model"`
	Tags        map[string]string `json:"tags"`
	State       string            `json:"state"`
	StateReason string            `json:"state_reason,omitempty"`
	Owner       string            `json:"owner,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
	Credentials []credentialJSON  `json:"credentials,omitempty"`

	// What only a running server knows (device show with `warden serve`
	// running); absent otherwise.
	Connected *bool             `json:"connected,omitempty"`
	LastSeen  *time.Time        `json:"last_seen,omitempty"`
	Firmware  *api.Firmware     `json:"firmware,omitempty"`
	Counters  *monitor.Activity `json:"counters,omitempty"`
}

type credentialJSON struct {
	Serial           string     `json:"serial"`
	Fingerprint      string     `json:"fingerprint_sha256"`
	NotBefore        time.Time  `json:"not_before"`
	NotAfter         time.Time  `json:"not_after"`
	RevokedAt        *time.Time `json:"revoked_at,omitempty"`
	RevocationReason string     `json:"revocation_reason,omitempty"`
	CertificatePEM   string     `json:"certificate_pem,omitempty"`
}

func toDeviceJSON(d store.Device) deviceJSON {
	tags := d.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	return deviceJSON{ID: d.ID, Model: d.Model, Tags: tags, State: string(d.State), StateReason: d.StateReason, Owner: d.Owner, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt}
}

func toCredentialJSON(cr store.Credential) credentialJSON {
	j := credentialJSON{Serial: cr.Serial, Fingerprint: cr.Fingerprint, NotBefore: cr.NotBefore, NotAfter: cr.NotAfter, RevocationReason: cr.RevocationReason}
	if !cr.RevokedAt.IsZero() {
		t := cr.RevokedAt
		j.RevokedAt = &t
	}
	if len(cr.Certificate) > 0 {
		j.CertificatePEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cr.Certificate}))
	}
	return j
}

func formatTags(t map[string]string) string {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + t[k]
	}
	return strings.Join(parts, ",")
}

func (c *cli) deviceListCmd() *cobra.Command {
	var state, model, after string
	var tags []string
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List devices (filters: --state, --model, --tag; paging: --limit, --after)",
		Example: `  warden device list --state active --tag site=berlin
  warden device list --json --limit 1000 --after 0badf00d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := parseTags(tags)
			if err != nil {
				return err
			}
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			ds, err := svc.ListDevices(cmd.Context(), store.DeviceFilter{State: store.DeviceState(state), Model: model, Tags: t, After: after, Limit: limit})
			if err != nil {
				return err
			}
			if asJSON {
				out := make([]deviceJSON, len(ds))
				for i, d := range ds {
					out[i] = toDeviceJSON(d)
				}
				return c.printJSON(out)
			}
			rows := make([][]string, len(ds))
			for i, d := range ds {
				rows[i] = []string{d.ID, orDash(d.Model), string(d.State), d.CreatedAt.UTC().Format(time.RFC3339), orDash(formatTags(d.Tags))}
			}
			c.table([]string{"ID", "MODEL", "STATE", "CREATED", "TAGS"}, rows)
			return nil
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only devices in this state: active, disabled or revoked")
	cmd.Flags().StringVar(&model, "model", "", "only devices of this model")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "only devices with tag key=value (repeatable; all must match)")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many devices (default 100, max 1000)")
	cmd.Flags().StringVar(&after, "after", "", "start after this device ID (paging)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (c *cli) deviceShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show a device, its state and its certificates",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			info, err := svc.Device(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			j := toDeviceJSON(info.Device)
			for _, cr := range info.Credentials {
				j.Credentials = append(j.Credentials, toCredentialJSON(cr))
			}
			online, isOnline := svc.(*apiclient.Client)
			if isOnline {
				d, err := online.DeviceDetail(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				j.Connected, j.LastSeen, j.Firmware, j.Counters = d.Connected, d.LastSeen, d.Firmware, d.Counters
			}
			if asJSON {
				return c.printJSON(j)
			}
			fmt.Fprintf(c.out, "Device   %s\nModel    %s\nState    %s", j.ID, orDash(j.Model), j.State)
			if j.StateReason != "" {
				fmt.Fprintf(c.out, " (%s)", j.StateReason)
			}
			fmt.Fprintf(c.out, "\nOwner    %s\nTags     %s\nCreated  %s\nUpdated  %s\n", orDash(j.Owner), orDash(formatTags(j.Tags)), j.CreatedAt.UTC().Format(time.RFC3339), j.UpdatedAt.UTC().Format(time.RFC3339))
			if isOnline {
				c.printLive(j)
			}
			for _, cr := range j.Credentials {
				status := "valid"
				if cr.RevokedAt != nil {
					status = "revoked " + cr.RevokedAt.UTC().Format(time.RFC3339)
				} else if time.Now().After(cr.NotAfter) {
					status = "expired"
				}
				fmt.Fprintf(c.out, "Certificate %s\n  SHA-256    %s\n  valid      %s .. %s\n  status     %s\n", cr.Serial, cr.Fingerprint,
					cr.NotBefore.UTC().Format(time.RFC3339), cr.NotAfter.UTC().Format(time.RFC3339), status)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (includes the certificates as PEM)")
	return cmd
}

// printLive prints what the running server knows of a device.
func (c *cli) printLive(j deviceJSON) {
	conn := "unknown"
	if j.Connected != nil {
		conn = map[bool]string{true: "yes", false: "no"}[*j.Connected]
	}
	seen := "not since the server started"
	if j.LastSeen != nil {
		seen = j.LastSeen.UTC().Format(time.RFC3339) + " (" + time.Since(*j.LastSeen).Round(time.Second).String() + " ago)"
	}
	fw := "never reported"
	if j.Firmware != nil {
		fw = fmt.Sprintf("%s (security counter %d, reported %s)", j.Firmware.Version, j.Firmware.SecurityCounter, j.Firmware.ReportedAt.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(c.out, "Online   %s\nSeen     %s\nFirmware %s\n", conn, seen, fw)
	if n := j.Counters; n != nil {
		fmt.Fprintf(c.out, "Counters %d messages (%d bytes) up, %d sessions, %d ACL denials since the server started\n", n.Messages, n.Bytes, n.Connects, n.ACLDenials)
	}
}

func (c *cli) deviceStateCmd(verb, short string, withReason bool) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   verb + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			var d store.Device
			switch verb {
			case "disable":
				d, err = svc.Disable(cmd.Context(), args[0], reason)
			case "enable":
				d, err = svc.Enable(cmd.Context(), args[0])
			case "revoke":
				d, err = svc.Revoke(cmd.Context(), args[0], reason)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Device %s is now %s\n", d.ID, d.State)
			return nil
		},
	}
	if withReason {
		cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the registry and the audit log)")
	}
	return cmd
}

func (c *cli) deviceTagCmd() *cobra.Command {
	var remove []string
	cmd := &cobra.Command{
		Use:   "tag ID [KEY=VALUE]... [--remove KEY]...",
		Short: "Set or remove a device's tags (other tags are kept)",
		Example: `  warden device tag 0badf00d site=berlin floor=2
  warden device tag 0badf00d --remove floor`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			set, err := parseTagArgs(args[1:])
			if err != nil {
				return err
			}
			if len(set) == 0 && len(remove) == 0 {
				return errors.New("give at least one KEY=VALUE to set or --remove KEY")
			}
			for _, k := range remove {
				if _, ok := set[k]; ok {
					return fmt.Errorf("tag %q is both set and removed: pick one", k)
				}
			}
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			// SetTags replaces the whole set, so merge into the current
			// tags; a concurrent change between the read and the write is
			// lost, as with any read-modify-write of one record.
			info, err := svc.Device(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			tags := info.Tags
			if tags == nil {
				tags = map[string]string{}
			}
			for k, v := range set {
				tags[k] = v
			}
			for _, k := range remove {
				delete(tags, k)
			}
			d, err := svc.SetTags(cmd.Context(), args[0], tags)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Device %s tags: %s\n", d.ID, orDash(formatTags(d.Tags)))
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&remove, "remove", nil, "remove the tag KEY (repeatable)")
	return cmd
}

// parseTagArgs parses KEY=VALUE arguments; the registry checks keys and
// values.
func parseTagArgs(args []string) (map[string]string, error) {
	tags := map[string]string{}
	for _, kv := range args {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("tag %q: want KEY=VALUE", kv)
		}
		tags[k] = v
	}
	return tags, nil
}

// writeFiles writes a certificate and its key (mode 0600), removing both if
// either fails.
func writeFiles(certPath string, cert []byte, keyPath string, key []byte) error {
	if err := fileutil.WriteFileAtomic(certPath, cert, 0o644); err != nil {
		return err
	}
	if err := fileutil.WriteFileAtomic(keyPath, key, 0o600); err != nil {
		_ = os.Remove(certPath)
		return err
	}
	return nil
}
