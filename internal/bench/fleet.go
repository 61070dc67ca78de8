package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/warden-iot/warden/envelope"
	"github.com/warden-iot/warden/internal/admin"
	"github.com/warden-iot/warden/internal/app"
	"github.com/warden-iot/warden/internal/config"
	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/registry"
	"github.com/warden-iot/warden/internal/store"
)

// Fleet defaults.
const (
	// DefaultConsumer is the name of the reader service that consumes
	// fleet/# (and, on Mosquitto, private/#).
	DefaultConsumer = "bench-consumer"
	// DeviceModel is the model benchmark devices are registered with, so
	// that they can be told from real ones in a shared registry.
	DeviceModel = "bench"
	// manifestName is the fleet directory's manifest. Its presence also
	// marks the directory as the benchmark's own, which lets a later run
	// clean up after an interrupted one.
	manifestName    = "bench-fleet.json"
	manifestVersion = 1
	// serviceSubdir holds the consumer's files, away from the devices'
	// (the simulator loads every ID.crt of the fleet directory).
	serviceSubdir = "service"
)

// FleetOptions configures ProvisionFleet.
type FleetOptions struct {
	// Binary is the warden executable; default os.Executable().
	Binary string
	// DataDir is the Warden data directory to register the devices in; it
	// is initialised (`warden init`) when it has no CA yet.
	DataDir string
	// Devices is how many devices the fleet must have.
	Devices int
	// Dir is the fleet directory: ID.crt and ID.key per device, ca.crt
	// (Warden's root), service/NAME.crt and .key for the consumer, and
	// the manifest. It must be empty, missing or a fleet directory of an
	// earlier run.
	Dir string
	// Envelope, if set, makes every device an envelope device with this
	// suite (ccm-8, legacy-cbc-hmac, sign-p256), as `warden device add ID
	// --envelope=SUITE` does; ID.envelope.json, .bin and .h are written
	// beside the certificate. Envelope devices are provisioned in-process
	// on the data directory, which must not have `warden serve` running.
	Envelope string
	// EnvelopeRequired makes the devices seal their uplinks even over TLS
	// (--envelope-required).
	EnvelopeRequired bool
	// Consumer is the reader service's name; default DefaultConsumer.
	Consumer string
	// Progress, if set, is told how many devices are ready of the total,
	// as they are provisioned.
	Progress func(done, total int)
}

// FleetDir is a provisioned fleet: device credentials on disk, registered
// in one Warden data directory, and a reader service to consume their
// telemetry. A later ProvisionFleet for the same data directory and
// directory reuses it, and provisions only what is missing.
type FleetDir struct {
	// Dir is the fleet directory and DataDir the data directory the
	// devices are registered in (both absolute).
	Dir     string `json:"-"`
	DataDir string `json:"data_dir"`
	// RootSHA256 is the fingerprint of the data directory's root when the
	// fleet was provisioned; a data directory initialised anew has
	// another, and its fleet is provisioned again.
	RootSHA256 string `json:"root_sha256"`
	// Envelope is the devices' envelope suite ("" for TLS-only devices)
	// and EnvelopeRequired whether they must seal over TLS too.
	Envelope         string `json:"envelope,omitempty"`
	EnvelopeRequired bool   `json:"envelope_required,omitempty"`
	// Devices are the device IDs, sorted, as many as asked for (the
	// directory may hold more from an earlier, larger run; the simulator's
	// LoadFleet with Limit picks the same first IDs).
	Devices []string `json:"devices"`
	// Consumer is the reader service's name, also its certificate's
	// common name (Mosquitto's username for it).
	Consumer string `json:"consumer"`
	// Reused is how many of Devices an earlier run had provisioned.
	Reused int `json:"-"`
	// Complete is false in a manifest written before provisioning ended.
	Complete bool `json:"complete"`
	Version  int  `json:"version"`
}

// CAFile is Warden's root certificate, which the devices pin.
func (f *FleetDir) CAFile() string { return filepath.Join(f.Dir, "ca.crt") }

// CertFile is a device's certificate.
func (f *FleetDir) CertFile(id string) string { return filepath.Join(f.Dir, id+".crt") }

// KeyFile is a device's private key (PKCS#8 PEM).
func (f *FleetDir) KeyFile(id string) string { return filepath.Join(f.Dir, id+".key") }

// BundleFile is an envelope device's bundle, for device.LoadEnvelopeBundle.
func (f *FleetDir) BundleFile(id string) string {
	return filepath.Join(f.Dir, id+".envelope.json")
}

// ConsumerCertFile is the reader service's certificate.
func (f *FleetDir) ConsumerCertFile() string {
	return filepath.Join(f.Dir, serviceSubdir, f.Consumer+".crt")
}

// ConsumerKeyFile is the reader service's private key.
func (f *FleetDir) ConsumerKeyFile() string {
	return filepath.Join(f.Dir, serviceSubdir, f.Consumer+".key")
}

// deviceFiles are the files of one device, by suffix.
func (f *FleetDir) deviceFiles(id string) []string {
	files := []string{f.CertFile(id), f.KeyFile(id)}
	if f.Envelope != "" {
		files = append(files, f.BundleFile(id))
	}
	return files
}

// ProvisionFleet makes sure Dir holds o.Devices devices registered in
// o.DataDir and a reader service, reusing what an earlier run left there
// for the same data directory (see FleetDir). TLS devices are provisioned
// with `warden device provision --count N --out DIR` (through the running
// server's admin socket when `warden serve` runs on the data directory,
// on the data directory directly otherwise); envelope devices in-process,
// as `warden device add --envelope` would, because the CLI has no batch
// form for them and a process per device is slow.
func ProvisionFleet(ctx context.Context, o FleetOptions) (*FleetDir, error) {
	if o.Devices < 1 {
		return nil, fmt.Errorf("bench: provision: the fleet needs at least one device, not %d", o.Devices)
	}
	if o.DataDir == "" || o.Dir == "" {
		return nil, errors.New("bench: provision: both the data directory and the fleet directory are required")
	}
	if o.Envelope != "" {
		if _, err := envelope.ParseSuite(o.Envelope); err != nil {
			return nil, fmt.Errorf("bench: provision: envelope suite: %w", err)
		}
	}
	if o.Consumer == "" {
		o.Consumer = DefaultConsumer
	}
	if err := identity.ValidateServiceName(o.Consumer); err != nil {
		return nil, fmt.Errorf("bench: provision: %w", err)
	}
	bin, err := selfBinary(o.Binary)
	if err != nil {
		return nil, err
	}
	dataDir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("bench: provision: %w", err)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("bench: provision: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("bench: provision: create the data directory: %w", err)
	}
	cli := wardenCLI{bin: bin, dataDir: dataDir}

	if _, err := os.Stat(filepath.Join(dataDir, "pki", "root.crt")); errors.Is(err, fs.ErrNotExist) {
		if _, err := cli.run(ctx, nil, "init"); err != nil {
			return nil, err
		}
	}
	fp, rootPEM, err := rootFingerprint(dataDir)
	if err != nil {
		return nil, err
	}

	f, err := openFleetDir(dir, dataDir, fp, o)
	if err != nil {
		return nil, err
	}
	if err := writeManifest(f); err != nil { // marks the directory as ours before anything else is written
		return nil, err
	}
	if err := cleanStray(f); err != nil {
		return nil, err
	}

	if _, err := os.Stat(f.ConsumerCertFile()); err != nil {
		if err := addConsumer(ctx, cli, f); err != nil {
			return nil, err
		}
		if err := writeManifest(f); err != nil {
			return nil, err
		}
	}

	total := o.Devices
	progress := func(done int) {
		if o.Progress != nil {
			o.Progress(min(done, total), total)
		}
	}
	progress(len(f.Devices))
	if need := total - len(f.Devices); need > 0 {
		var added []string
		if f.Envelope == "" {
			added, err = provisionTLS(ctx, cli, f, need, progress)
		} else {
			added, err = provisionEnvelope(ctx, f, need, progress)
		}
		if len(added) > 0 {
			// Keep what was provisioned even when the rest failed, so the
			// next run starts from there.
			f.Devices = append(f.Devices, added...)
			slices.Sort(f.Devices)
			if merr := writeManifest(f); merr != nil && err == nil {
				err = merr
			}
		}
		if err != nil {
			return nil, err
		}
	}
	// Always from the data directory, whatever the CLI or an earlier run
	// left: the devices pin this root.
	if err := fileutil.WriteFileAtomic(f.CAFile(), rootPEM, 0o644); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	f.Complete = true
	if err := writeManifest(f); err != nil {
		return nil, err
	}
	out := *f
	out.Devices = slices.Clone(f.Devices[:total])
	return &out, nil
}

// openFleetDir reads the manifest of dir and decides what of it can be
// reused: everything when it belongs to the same data directory (same
// root) and kind of device; nothing otherwise (its files are removed).
// A directory without a manifest must be empty or missing.
func openFleetDir(dir, dataDir, fp string, o FleetOptions) (*FleetDir, error) {
	fresh := &FleetDir{Dir: dir, DataDir: dataDir, RootSHA256: fp, Envelope: o.Envelope,
		EnvelopeRequired: o.EnvelopeRequired, Consumer: o.Consumer, Version: manifestVersion}
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		entries, rerr := os.ReadDir(dir)
		if rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return nil, fmt.Errorf("bench: fleet directory: %w", rerr)
		}
		if len(entries) > 0 {
			return nil, fmt.Errorf("bench: %s is not empty and has no %s: give an empty directory (or one an earlier benchmark run provisioned), so that no other files are mixed into the fleet", dir, manifestName)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("bench: create the fleet directory: %w", err)
		}
		return fresh, nil
	case err != nil:
		return nil, fmt.Errorf("bench: read the fleet manifest: %w", err)
	}
	var old FleetDir
	if err := json.Unmarshal(b, &old); err != nil || old.Version != manifestVersion {
		return fresh, nil // ours, but unreadable or from another version: start over
	}
	old.Dir = dir
	if old.DataDir != dataDir || old.RootSHA256 != fp || old.Envelope != o.Envelope ||
		old.EnvelopeRequired != o.EnvelopeRequired || old.Consumer != o.Consumer {
		return fresh, nil // cleanStray removes the old files
	}
	// Keep the devices whose files are all there.
	kept := old.Devices[:0]
	for _, id := range old.Devices {
		if identity.ValidateDeviceID(id) != nil {
			continue
		}
		ok := true
		for _, p := range old.deviceFiles(id) {
			if _, err := os.Stat(p); err != nil {
				ok = false
				break
			}
		}
		if ok {
			kept = append(kept, id)
		}
	}
	slices.Sort(kept)
	old.Devices = slices.Compact(kept)
	old.Complete = false
	old.Reused = min(len(old.Devices), o.Devices)
	return &old, nil
}

// writeManifest writes the manifest atomically.
func writeManifest(f *FleetDir) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: encode the fleet manifest: %w", err)
	}
	if err := fileutil.WriteFileAtomic(filepath.Join(f.Dir, manifestName), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// cleanStray removes device files of devices the manifest does not list
// (left by an interrupted run, or by a fleet of another data directory),
// temporary files of interrupted writes, and the consumer's files when
// they are not the listed consumer's. The simulator loads every device in
// the directory, so strays would join the fleet.
func cleanStray(f *FleetDir) error {
	keep := make(map[string]bool, len(f.Devices))
	for _, id := range f.Devices {
		keep[id] = true
	}
	entries, err := os.ReadDir(f.Dir)
	if err != nil {
		return fmt.Errorf("bench: fleet directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() {
			if name == serviceSubdir && len(f.Devices) == 0 {
				if err := os.RemoveAll(filepath.Join(f.Dir, name)); err != nil {
					return fmt.Errorf("bench: remove the old consumer: %w", err)
				}
			}
			continue
		}
		id, ok := deviceFileID(name)
		switch {
		case strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-"):
		case ok && !keep[id]:
		default:
			continue
		}
		if err := os.Remove(filepath.Join(f.Dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("bench: remove a stray file: %w", err)
		}
	}
	return nil
}

// deviceFileID returns the device ID a fleet file belongs to.
func deviceFileID(name string) (string, bool) {
	for _, suf := range []string{".envelope.json", ".envelope.bin", ".envelope.h", ".key.der", ".key.raw", ".crt", ".key"} {
		if id, ok := strings.CutSuffix(name, suf); ok && id != "ca" && identity.ValidateDeviceID(id) == nil {
			return id, true
		}
	}
	return "", false
}

// wardenCLI runs warden commands on one data directory.
type wardenCLI struct {
	bin, dataDir string
}

// run runs a command, sending each line of its standard output to line
// (if set), and returns its standard error. The data directory's
// warden.yaml (written by StartWarden) is used when present, so the CLI
// sees the same configuration as the server.
func (c wardenCLI) run(ctx context.Context, line func(string), args ...string) (string, error) {
	conf := filepath.Join(c.dataDir, "warden.yaml")
	if _, err := os.Stat(conf); err == nil {
		args = append(args, "--config", conf)
	} else {
		args = append(args, "--data", c.dataDir)
	}
	cmd := exec.CommandContext(ctx, c.bin, args...)
	// The data directory as working directory: no stray ./warden.yaml of
	// the caller's is read.
	cmd.Dir = c.dataDir
	cmd.Env = childEnv(nil)
	cmd.WaitDelay = 10 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, n: 64 << 10}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", fmt.Errorf("bench: warden %s: %w", args[0], err)
	}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("bench: run warden %s: %w", args[0], err)
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if line != nil {
			line(sc.Text())
		}
	}
	_, _ = io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		return stderr.String(), fmt.Errorf("bench: warden %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stderr.String(), nil
}

// limitedWriter keeps the first n bytes written to it.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		_, _ = l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}

// addConsumer registers the reader service. Its name may be taken in the
// data directory by an earlier fleet whose files are gone; then a name
// with a random suffix is used.
func addConsumer(ctx context.Context, cli wardenCLI, f *FleetDir) error {
	out := filepath.Join(f.Dir, serviceSubdir)
	if err := os.RemoveAll(out); err != nil {
		return fmt.Errorf("bench: remove the old consumer: %w", err)
	}
	_, err := cli.run(ctx, nil, "service", "add", f.Consumer, "--role", identity.RoleReader, "--out", out)
	if err == nil {
		return nil
	}
	suffix, rerr := identity.NewDeviceID() // 8 random hex digits
	if rerr != nil {
		return err
	}
	name := f.Consumer + "-" + suffix
	if _, err2 := cli.run(ctx, nil, "service", "add", name, "--role", identity.RoleReader, "--out", out); err2 != nil {
		return fmt.Errorf("%w\n(and as %s: %v)", err, name, err2)
	}
	f.Consumer = name
	return nil
}

// provisionTLS runs `warden device provision`, which prints each device's
// ID once it is fully registered and has its files.
func provisionTLS(ctx context.Context, cli wardenCLI, f *FleetDir, n int, progress func(int)) ([]string, error) {
	var added []string
	_, err := cli.run(ctx, func(line string) {
		id := strings.TrimSpace(line)
		if identity.ValidateDeviceID(id) != nil {
			return
		}
		added = append(added, id)
		progress(len(f.Devices) + len(added))
	}, "device", "provision", "--count", fmt.Sprint(n), "--model", DeviceModel, "--out", f.Dir)
	return added, err
}

// provisionEnvelope registers n envelope devices in-process, doing for
// each what `warden device add ID --envelope=SUITE --out DIR` does:
// generate the key, issue the certificate, write ID.crt and ID.key, then
// register the device, then enable its envelope and write its bundle.
func provisionEnvelope(ctx context.Context, f *FleetDir, n int, progress func(int)) ([]string, error) {
	if running(f.DataDir) {
		return nil, fmt.Errorf("bench: `warden serve` is running on %s; envelope devices are provisioned on the data directory directly, so provision them before starting it", f.DataDir)
	}
	cfg, err := dataDirConfig(f.DataDir)
	if err != nil {
		return nil, err
	}
	env, err := app.Open(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, fmt.Errorf("bench: open the data directory: %w", err)
	}
	defer env.Close()
	svc := admin.Local{Registry: env.Registry}
	var added []string
	for len(added) < n {
		if err := ctx.Err(); err != nil {
			return added, fmt.Errorf("bench: provisioning interrupted after %d of %d envelope devices: %w", len(added), n, err)
		}
		id, err := identity.NewDeviceID()
		if err != nil {
			return added, err
		}
		if fileExists(f.CertFile(id)) {
			continue // never overwrite another device's files
		}
		err = addEnvelopeDevice(ctx, svc, f, id)
		if errors.Is(err, store.ErrConflict) {
			continue // a 32-bit ID collided with an existing device; draw again
		}
		if err != nil {
			return added, err
		}
		added = append(added, id)
		progress(len(f.Devices) + len(added))
	}
	return added, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// addEnvelopeDevice provisions one envelope device. Files are delivered
// before the device is registered, as the CLI does; on a failure after
// that, the manifest does not list it and the next run removes its files.
func addEnvelopeDevice(ctx context.Context, svc admin.Local, f *FleetDir, id string) error {
	key, err := pki.GenerateKey()
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	csr, err := pki.CreateCSR(key, id)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	keyPEM, err := pki.EncodePrivateKey(key, "pem")
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	spec := registry.DeviceSpec{ID: id, Model: DeviceModel}
	issued, err := svc.IssueDevice(ctx, spec, csr)
	if err != nil {
		return fmt.Errorf("bench: issue a certificate for device %s: %w", id, err)
	}
	if err := fileutil.WriteFileAtomic(f.CertFile(id), []byte(issued.CertificatePEM), 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := fileutil.WriteFileAtomic(f.KeyFile(id), keyPEM, 0o600); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if _, err := svc.RegisterDevice(ctx, spec, csr, issued.CertificatePEM); err != nil {
		_ = os.Remove(f.CertFile(id))
		_ = os.Remove(f.KeyFile(id))
		return fmt.Errorf("bench: register device %s: %w", id, err)
	}
	b, err := svc.EnableEnvelope(ctx, id, f.Envelope, f.EnvelopeRequired)
	if err != nil {
		return fmt.Errorf("bench: device %s is registered, but enabling its envelope failed: %w", id, err)
	}
	defer clear(b.Secret)
	return writeEnvelopeBundle(f.Dir, b)
}

// running reports whether `warden serve` answers on the data directory's
// admin socket.
func running(dataDir string) bool {
	c, err := net.DialTimeout("unix", filepath.Join(dataDir, "warden.sock"), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// dataDirConfig is the configuration the CLI would use on the data
// directory: its warden.yaml when StartWarden wrote one, else the
// defaults. The caller's environment and working directory play no part.
func dataDirConfig(dataDir string) (*config.Config, error) {
	conf := filepath.Join(dataDir, "warden.yaml")
	if _, err := os.Stat(conf); err == nil {
		cfg, err := config.Load(config.LoadOptions{File: conf})
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		return cfg, nil
	}
	cfg := config.Default()
	cfg.Data = dataDir
	return &cfg, nil
}

// writeEnvelopeBundle writes the files `warden device add --envelope`
// writes (cmd/warden, writeEnvelopeBundle): ID.envelope.json (what the Go
// SDK loads), ID.envelope.bin (the raw secret; not for sign-p256) and
// ID.envelope.h (a C header), each mode 0600.
func writeEnvelopeBundle(dir string, b admin.EnvelopeBundle) error {
	type bundleJSON struct {
		DeviceID  string `json:"device_id"`
		Suite     string `json:"suite"`
		Epoch     uint32 `json:"epoch"`
		SecretHex string `json:"secret_hex,omitempty"`
		Required  bool   `json:"required"`
	}
	js, err := json.MarshalIndent(bundleJSON{b.DeviceID, b.Suite, b.Epoch, hex.EncodeToString(b.Secret), b.Required}, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: encode the envelope bundle: %w", err)
	}
	base := filepath.Join(dir, b.DeviceID+".envelope")
	if err := fileutil.WriteFileAtomic(base+".json", append(js, '\n'), 0o600); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if len(b.Secret) > 0 {
		if err := fileutil.WriteFileAtomic(base+".bin", b.Secret, 0o600); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	if err := fileutil.WriteFileAtomic(base+".h", envelopeHeader(b), 0o600); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// envelopeHeader renders the bundle as a C header, as the CLI does.
func envelopeHeader(b admin.EnvelopeBundle) []byte {
	suite, _ := envelope.ParseSuite(b.Suite)
	guard := "WARDEN_ENVELOPE_" + strings.ToUpper(strings.ReplaceAll(b.DeviceID, "-", "_")) + "_H"
	required := 0
	if b.Required {
		required = 1
	}
	var w strings.Builder
	fmt.Fprintf(&w, "/* Warden envelope bundle for device %s (docs/envelope.md).\n", b.DeviceID)
	fmt.Fprintf(&w, " * Generated by `warden device add --envelope`. It holds the master secret:\n")
	fmt.Fprintf(&w, " * keep it out of version control and off shared build machines. */\n")
	fmt.Fprintf(&w, "#ifndef %s\n#define %s\n\n", guard, guard)
	fmt.Fprintf(&w, "#define WARDEN_DEVICE_ID \"%s\"\n", b.DeviceID)
	fmt.Fprintf(&w, "#define WARDEN_ENVELOPE_SUITE %d /* %s */\n", suite, b.Suite)
	fmt.Fprintf(&w, "#define WARDEN_ENVELOPE_EPOCH %du\n", b.Epoch)
	fmt.Fprintf(&w, "#define WARDEN_ENVELOPE_REQUIRED %d\n", required)
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
