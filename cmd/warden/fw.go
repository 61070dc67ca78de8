package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/internal/keystore"
)

func (c *cli) fwCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fw",
		Short: "Sign, verify, trust and upload firmware (MCUboot images + signed release statements)",
		Long: `Firmware is signed with a release key that never touches the server: the
server only holds its public half (` + "`warden fw trust`" + `), checks uploads against it, and
devices verify every image themselves (docs/firmware.md).

Offline, on the release machine:
  warden fw keygen --out release.key               # prints release.pub as PEM and a C array
  warden fw sign --key release.key --model sensor-v2 --version 1.2.3+4 \
      --security-counter 3 app.bin app.img         # also writes app.img.statement
  warden fw verify --pub release.pub app.img --statement app.img.statement

On the server:
  warden fw trust release.pub
  warden fw upload app.img --statement app.img.statement
  warden rollout create --image <sha256> --stages 1%,10%,50%,100%`,
	}
	cmd.AddCommand(c.fwKeygenCmd(), c.fwSignCmd(), c.fwVerifyCmd(), c.fwTrustCmd(), c.fwUntrustCmd(), c.fwKeysCmd(), c.fwUploadCmd(), c.fwListCmd())
	return cmd
}

func (c *cli) fwKeygenCmd() *cobra.Command {
	var out, pubOut, keyType, passFile string
	cmd := &cobra.Command{
		Use:   "keygen --out release.key",
		Short: "Make a release signing key, sealed with a passphrase",
		Long: `keygen makes a release key (ECDSA P-256 by default, or Ed25519), seals the
private key with your passphrase (scrypt + AES-256-GCM) into --out, writes the
public key next to it (--pub-out, default <out without .key>.pub), and prints
the public key as PEM and as a C array to build into the bootloader
(MCUboot's key file). Keep the key file offline; the server never needs it.`,
		Example: `  warden fw keygen --out release.key
  warden fw keygen --out release.key --type ed25519 --passphrase-file pass.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pubOut == "" {
				pubOut = strings.TrimSuffix(out, ".key") + ".pub"
			}
			if pubOut == out {
				return errors.New("--pub-out must differ from --out")
			}
			for _, p := range []string{out, pubOut} {
				if _, err := os.Stat(p); err == nil {
					return fmt.Errorf("%s exists; refusing to overwrite a key (choose another --out or move it away)", p)
				}
			}
			key, err := firmware.GenerateKey(firmware.KeyType(keyType))
			if err != nil {
				return err
			}
			der, err := firmware.MarshalPrivateKey(key)
			if err != nil {
				return err
			}
			pass, err := c.passphrase(passFile, "Passphrase for the new release key: ", true)
			if err != nil {
				return err
			}
			sealed, err := keystore.SealWithPassphrase(pass, der)
			if err != nil {
				return err
			}
			pubPEM, err := firmware.EncodePublicKeyPEM(key.Public())
			if err != nil {
				return err
			}
			if err := fileutil.WriteNewFileAtomic(out, sealed, 0o600); err != nil {
				return err
			}
			if err := fileutil.WriteNewFileAtomic(pubOut, pubPEM, 0o644); err != nil {
				return err
			}
			id, _ := firmware.KeyID(key.Public())
			carray, err := firmware.PublicKeyCArray(key.Public(), "release")
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Wrote %s (private, sealed with your passphrase: keep it offline)\nWrote %s (public: give it to `warden fw trust` and to the bootloader)\nKey ID (SHA-256 of the public key, MCUboot key hash): %s\n\n%s\n%s", out, pubOut, id, pubPEM, carray)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file for the sealed private key")
	cmd.Flags().StringVar(&pubOut, "pub-out", "", "file for the public key (default: --out with .pub instead of .key)")
	cmd.Flags().StringVar(&keyType, "type", string(firmware.KeyECDSAP256), "key type: ecdsa-p256 or ed25519")
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "read the passphrase from this file instead of the terminal")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// parseSize reads a number in decimal or 0x hex.
func parseSize(s string) (int, error) {
	n, err := strconv.ParseInt(s, 0, 64)
	if err != nil || n < 0 || n > 1<<32 {
		return 0, fmt.Errorf("%q is not a size (decimal or 0x hex)", s)
	}
	return int(n), nil
}

// parseExpiry reads a duration with a d (days) unit allowed.
func parseExpiry(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("--expires %q: give a duration such as 90d or 720h", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--expires %q: give a duration such as 90d or 720h", s)
	}
	return d, nil
}

func (c *cli) fwSignCmd() *cobra.Command {
	var (
		keyFile, passFile, versionS, model, headerS, slotS, statementOut, expiresS string
		counter                                                                    uint32
		align                                                                      int
		sequence                                                                   uint64
		pad                                                                        bool
	)
	cmd := &cobra.Command{
		Use:   "sign --key release.key --model M --version 1.2.3+4 --security-counter N in.bin out.img",
		Short: "Sign a firmware binary as an MCUboot image and write its release statement",
		Long: `sign wraps in.bin as an MCUboot image (header, protected TLVs with the security
counter, SHA-256, key hash and signature) that stock MCUboot bootloaders boot,
and writes a release statement (COSE_Sign1) naming the model, version,
security counter, the image's SHA-256 and size, a sequence number and an
expiry. Devices check the statement before they download, so an old but
validly signed release cannot be replayed to them.

--header-size must match the bootloader's configuration (Zephyr and nRF
Connect SDK use 0x200). --slot-size checks that the image and MCUboot's
trailer fit the slot; --pad fills the slot with 0xff for direct flashing.
--security-counter is the anti-rollback floor: once a device boots an image,
it refuses any image with a lower counter. Raise it for security fixes.
--sequence defaults to the current Unix time in microseconds, which keeps
growing as long as one machine (with a sane clock) signs; a device refuses a
statement whose sequence is not above the one it accepted last.`,
		Example: `  warden fw sign --key release.key --model sensor-v2 --version 1.2.3+4 --security-counter 3 app.bin app.img
  warden fw sign --key release.key --model sensor-v2 --version 1.3.0 --security-counter 4 \
      --header-size 0x200 --align 8 --slot-size 0x60000 --expires 30d zephyr.bin zephyr.signed.img`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, out := args[0], args[1]
			ver, err := firmware.ParseVersion(versionS)
			if err != nil {
				return fmt.Errorf("--version: %w", err)
			}
			header, err := parseSize(headerS)
			if err != nil {
				return fmt.Errorf("--header-size: %w", err)
			}
			slot := 0
			if slotS != "" {
				if slot, err = parseSize(slotS); err != nil {
					return fmt.Errorf("--slot-size: %w", err)
				}
			}
			expires, err := parseExpiry(expiresS)
			if err != nil {
				return err
			}
			if statementOut == "" {
				statementOut = out + ".statement"
			}
			payload, err := os.ReadFile(in)
			if err != nil {
				return err
			}
			sealed, err := os.ReadFile(keyFile)
			if err != nil {
				return err
			}
			pass, err := c.passphrase(passFile, "Passphrase for "+keyFile+": ", false)
			if err != nil {
				return err
			}
			der, err := keystore.OpenWithPassphrase(pass, sealed)
			if err != nil {
				return fmt.Errorf("open %s: %w", keyFile, err)
			}
			key, err := firmware.ParsePrivateKey(der)
			if err != nil {
				return fmt.Errorf("%s: %w", keyFile, err)
			}
			img, err := firmware.Sign(payload, key, firmware.SignOptions{
				Version: ver, SecurityCounter: counter, HeaderSize: header, Align: align, SlotSize: slot, Pad: pad,
			})
			if err != nil {
				return err
			}
			now := time.Now().UTC().Truncate(time.Second)
			if sequence == 0 {
				// Microseconds: two releases signed in the same second
				// still get different, growing sequence numbers.
				sequence = uint64(time.Now().UnixMicro())
			}
			sum := sha256.Sum256(img)
			st, err := firmware.SignStatement(firmware.Statement{
				Model: model, Version: ver, SecurityCounter: counter, ImageSHA256: sum, ImageSize: int64(len(img)),
				Sequence: sequence, IssuedAt: now, ExpiresAt: now.Add(expires),
			}, key)
			if err != nil {
				return err
			}
			if err := fileutil.WriteFileAtomic(out, img, 0o644); err != nil {
				return err
			}
			if err := fileutil.WriteFileAtomic(statementOut, st, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Signed %s -> %s (%d bytes, SHA-256 %s)\n  model %s, version %s, security counter %d\n  statement %s (sequence %d, expires %s)\n",
				in, out, len(img), hex.EncodeToString(sum[:]), model, ver, counter, statementOut, sequence, now.Add(expires).Format(time.RFC3339))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "key", "", "sealed release key from `warden fw keygen`")
	f.StringVar(&passFile, "passphrase-file", "", "read the key's passphrase from this file instead of the terminal")
	f.StringVar(&versionS, "version", "", "image version, major.minor.revision[+build] (e.g. 1.2.3+4)")
	f.StringVar(&model, "model", "", "device model the image is for (devices refuse other models' images)")
	f.Uint32Var(&counter, "security-counter", 0, "anti-rollback security counter")
	f.StringVar(&headerS, "header-size", "0x200", "MCUboot header size, as the bootloader expects (decimal or 0x hex)")
	f.IntVar(&align, "align", 8, "flash write alignment: 1, 2, 4, 8, 16 or 32")
	f.StringVar(&slotS, "slot-size", "", "slot size; checks that image and trailer fit (decimal or 0x hex)")
	f.BoolVar(&pad, "pad", false, "pad the image to --slot-size with 0xff (for direct flashing)")
	f.Uint64Var(&sequence, "sequence", 0, "statement sequence number (default: the current Unix time in microseconds)")
	f.StringVar(&expiresS, "expires", "90d", "how long the statement stays valid (e.g. 30d, 720h)")
	f.StringVar(&statementOut, "statement-out", "", "release statement file (default OUT.statement)")
	for _, r := range []string{"key", "version", "model"} {
		_ = cmd.MarkFlagRequired(r)
	}
	return cmd
}

func (c *cli) fwVerifyCmd() *cobra.Command {
	var pubFile, statementFile string
	cmd := &cobra.Command{
		Use:   "verify --pub release.pub IMAGE [--statement FILE]",
		Short: "Check an image (and its statement) against a release public key; exit 0 only if valid",
		Long: `verify checks what a device checks: the MCUboot image's SHA-256, key hash and
signature, and with --statement, the statement's signature and that it names
this exact file (size, SHA-256, version, security counter). It prints a
one-line verdict and exits 0 if everything holds, 1 if not.`,
		Example: `  warden fw verify --pub release.pub app.img
  warden fw verify --pub release.pub app.img --statement app.img.statement`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pubPEM, err := os.ReadFile(pubFile)
			if err != nil {
				return err
			}
			pub, err := firmware.ParsePublicKeyPEM(pubPEM)
			if err != nil {
				return fmt.Errorf("%s: %w", pubFile, err)
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			verdict, err := verifyImage(data, pub, statementFile)
			if err != nil {
				fmt.Fprintf(c.out, "FAILED: %s: %v\n", args[0], err)
				return &exitError{code: 1} // the verdict is the message
			}
			fmt.Fprintf(c.out, "OK: %s: %s\n", args[0], verdict)
			return nil
		},
	}
	cmd.Flags().StringVar(&pubFile, "pub", "", "release public key (PEM)")
	cmd.Flags().StringVar(&statementFile, "statement", "", "release statement to check against the image")
	_ = cmd.MarkFlagRequired("pub")
	return cmd
}

func verifyImage(data []byte, pub any, statementFile string) (string, error) {
	img, err := firmware.ParseImage(data)
	if err != nil {
		return "", err
	}
	if err := img.Verify(pub); err != nil {
		return "", err
	}
	counter, _ := img.SecurityCounter()
	id, _ := firmware.KeyID(pub)
	var b bytes.Buffer
	fmt.Fprintf(&b, "MCUboot image version %s, security counter %d, signed by key %s", img.Header.Version, counter, id[:16])
	if n := len(img.Unknown()); n > 0 {
		fmt.Fprintf(&b, " (warning: %d unknown unprotected TLVs, which are not signed and were ignored)", n)
	}
	if statementFile != "" {
		raw, err := os.ReadFile(statementFile)
		if err != nil {
			return "", err
		}
		st, err := firmware.VerifyStatement(raw, pub)
		if err != nil {
			return "", fmt.Errorf("statement: %w", err)
		}
		if _, err := st.MatchImage(data, pub); err != nil {
			return "", fmt.Errorf("statement does not match the image: %w", err)
		}
		state := "valid"
		if !time.Now().Before(st.ExpiresAt) {
			state = "EXPIRED"
		}
		fmt.Fprintf(&b, "; statement for model %s, sequence %d, %s until %s", st.Model, st.Sequence, state, st.ExpiresAt.Format(time.RFC3339))
		if state != "valid" {
			return "", fmt.Errorf("statement expired at %s (image itself verifies)", st.ExpiresAt.Format(time.RFC3339))
		}
	}
	return b.String(), nil
}

func (c *cli) fwTrustCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "trust release.pub",
		Short: "Trust a release public key for uploads (the private key never comes here)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pem, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if bytes.Contains(pem, []byte("PRIVATE KEY")) || bytes.Contains(pem, []byte(keystore.PassphraseSealedType)) {
				return fmt.Errorf("%s holds a private key; give the public key (.pub) instead, and keep the private key off this server", args[0])
			}
			if name == "" {
				name = args[0]
			}
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			k, err := svc.TrustKey(cmd.Context(), pem, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Trusting release key %s (%s)\n", k.ID, k.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "label for the key (default: the file name)")
	return cmd
}

func (c *cli) fwUntrustCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "untrust KEY-ID",
		Short: "Stop trusting a release key; its images are no longer offered (permanent)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			k, err := svc.UntrustKey(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Release key %s revoked at %s\n", k.ID, k.RevokedAt.Format(time.RFC3339))
			return nil
		},
	}
}

func (c *cli) fwKeysCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "List release keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			ks, err := svc.ReleaseKeys(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return c.printJSON(ks)
			}
			rows := make([][]string, 0, len(ks))
			for _, k := range ks {
				state := "trusted"
				if k.Revoked() {
					state = "revoked " + k.RevokedAt.Format(time.RFC3339)
				}
				rows = append(rows, []string{k.ID, k.CreatedAt.Format(time.RFC3339), state, k.Name})
			}
			c.table([]string{"KEY ID", "ADDED", "STATE", "NAME"}, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (c *cli) fwUploadCmd() *cobra.Command {
	var statementFile string
	cmd := &cobra.Command{
		Use:   "upload IMAGE --statement FILE",
		Short: "Store an image on the server after verifying it against a trusted release key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if statementFile == "" {
				statementFile = args[0] + ".statement"
			}
			st, err := os.ReadFile(statementFile)
			if err != nil {
				return fmt.Errorf("%w (give the statement `warden fw sign` wrote with --statement)", err)
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			img, err := svc.UploadImage(cmd.Context(), st, f)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Stored %s\n  sha256  %s\n  model %s, version %s, security counter %d, %d bytes, statement sequence %d expires %s\nRoll it out with:\n  warden rollout create --image %s --stages 1%%,10%%,50%%,100%%\n",
				args[0], img.SHA256, img.Model, img.Version, img.SecurityCounter, img.Size, img.Sequence, img.ExpiresAt.Format(time.RFC3339), img.SHA256[:12])
			return nil
		},
	}
	cmd.Flags().StringVar(&statementFile, "statement", "", "release statement (default IMAGE.statement)")
	return cmd
}

func (c *cli) fwListCmd() *cobra.Command {
	var model string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--model M]",
		Short: "List stored images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			imgs, err := svc.Images(cmd.Context(), model)
			if err != nil {
				return err
			}
			if asJSON {
				return c.printJSON(imgs)
			}
			rows := make([][]string, 0, len(imgs))
			for _, im := range imgs {
				rows = append(rows, []string{im.SHA256[:16], im.Model, im.Version, strconv.FormatUint(uint64(im.SecurityCounter), 10),
					strconv.FormatInt(im.Size, 10), im.ExpiresAt.Format(time.RFC3339), im.UploadedAt.Format(time.RFC3339)})
			}
			c.table([]string{"SHA256", "MODEL", "VERSION", "COUNTER", "BYTES", "EXPIRES", "UPLOADED"}, rows)
			return nil
		},
	}
	cmd.Flags().StringVar(&model, "model", "", "only this model")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
