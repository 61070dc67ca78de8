package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/warden-iot/warden/internal/app"
	"github.com/warden-iot/warden/internal/fileutil"
	"github.com/warden-iot/warden/internal/pki"
)

func (c *cli) caCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Rotate the issuing CA, show its state; export the root certificate, move the root key offline",
		Long: `Warden's CA is a root CA (what devices pin) and an issuing CA under it that
signs every certificate. ` + "`warden ca rotate`" + ` replaces the issuing CA without
touching any device's key: every active device's certificate is re-issued
from the CSR the registry keeps and delivered on private/<id>/cert/new; the
old issuing CA stays trusted until the grace period ends or every device has
switched. Devices keep pinning the same root. See docs/pki.md.`,
	}
	cmd.AddCommand(c.exportRootCmd(), c.exportRootKeyCmd(), c.importRootKeyCmd(), c.caRotateCmd(), c.caStatusCmd(),
		c.caRetireIssuerCmd(), c.caRevokeIssuerCmd())
	return cmd
}

func (c *cli) exportRootCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "export-root --out FILE",
		Short: "Write the root CA certificate (what devices pin) as PEM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := c.load(cmd)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(app.RootCertPath(cfg))
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%w: no root certificate at %s; run `warden init` first", app.ErrNotInitialized, app.RootCertPath(cfg))
			}
			if err != nil {
				return err
			}
			certs, err := pki.ParseCertificates(data)
			if err != nil || len(certs) != 1 {
				return fmt.Errorf("%s is damaged (expected one PEM certificate): %v", app.RootCertPath(cfg), err)
			}
			if out == "-" {
				_, err = c.out.Write(data)
				return err
			}
			if err := fileutil.WriteFileAtomic(out, data, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Wrote %s (%s, SHA-256 %s)\n", out, certs[0].Subject.CommonName, pki.Fingerprint(certs[0]))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write (\"-\" for standard output)")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func (c *cli) exportRootKeyCmd() *cobra.Command {
	var out, passFile string
	var keep bool
	cmd := &cobra.Command{
		Use:   "export-root-key --out FILE",
		Short: "Move the root CA key off this server, sealed with a passphrase",
		Long: `export-root-key writes the root CA's private key to FILE, sealed with a
passphrase (scrypt + AES-256-GCM; see docs/pki.md), and then deletes the
server's copy, so the root can live offline. The server keeps issuing device
certificates with the issuing CA; only creating a new issuing CA needs the
root key back.

The passphrase is read from --passphrase-file, or asked for twice on the
terminal. It must be at least 12 characters.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := c.load(cmd)
			if err != nil {
				return err
			}
			if _, err := os.Stat(out); err == nil {
				return fmt.Errorf("%s exists; refusing to overwrite an exported key", out)
			}
			env, err := app.Open(cmd.Context(), cfg, quiet(log))
			if err != nil {
				return err
			}
			defer env.Close()
			if !env.CA.HasRootKey() {
				return fmt.Errorf("%w: the root key has already been moved off this server", pki.ErrNoRootKey)
			}
			pass, err := c.passphrase(passFile, "Passphrase for the exported root key: ", true)
			if err != nil {
				return err
			}
			sealed, err := env.CA.ExportRootKey(pass)
			if err != nil {
				return err
			}
			if err := fileutil.WriteFileAtomic(out, sealed, 0o600); err != nil {
				return err
			}
			if keep {
				fmt.Fprintf(c.out, "Wrote the sealed root key to %s; the server keeps its copy (--keep).\n", out)
				return nil
			}
			if err := env.CA.RemoveRootKey(); err != nil {
				return fmt.Errorf("the key was exported to %s but the server copy could not be removed: %w", out, err)
			}
			fmt.Fprintf(c.out, "Moved the root key to %s (sealed with your passphrase). Store it offline; the server no longer has it.\n", out)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write the sealed key to (mode 0600)")
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "read the passphrase from this file instead of the terminal")
	cmd.Flags().BoolVar(&keep, "keep", false, "export a copy but keep the key on the server")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// passphrase reads a passphrase from file, or asks on the terminal (twice
// when confirm is set, for a new secret).
func (c *cli) passphrase(file, prompt string, confirm bool) ([]byte, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read passphrase file: %w", err)
		}
		return bytes.TrimRight(b, "\r\n"), nil
	}
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, errors.New("no terminal to ask for a passphrase; use --passphrase-file FILE")
	}
	fmt.Fprint(c.err, prompt)
	p1, err := term.ReadPassword(fd)
	fmt.Fprintln(c.err)
	if err != nil {
		return nil, err
	}
	if !confirm {
		return p1, nil
	}
	fmt.Fprint(c.err, "Repeat it: ")
	p2, err := term.ReadPassword(fd)
	fmt.Fprintln(c.err)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(p1, p2) {
		return nil, errors.New("the passphrases differ")
	}
	if strings.TrimSpace(string(p1)) == "" {
		return nil, errors.New("empty passphrase")
	}
	return p1, nil
}

func (c *cli) importRootKeyCmd() *cobra.Command {
	var in, passFile string
	cmd := &cobra.Command{
		Use:   "import-root-key --in FILE",
		Short: "Put an exported root CA key back on this server, for a rotation",
		Long: `import-root-key puts back the root CA key that export-root-key moved off
this server (FILE is its output), so that ` + "`warden ca rotate`" + ` can create a
new issuing CA. It refuses a key that is not this CA's root. After the
rotation, move it off again with ` + "`warden ca export-root-key`" + `. It works
while the server runs: the key is read from disk when it is needed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := c.load(cmd)
			if err != nil {
				return err
			}
			sealed, err := os.ReadFile(in)
			if err != nil {
				return err
			}
			env, err := app.Open(cmd.Context(), cfg, quiet(log))
			if err != nil {
				return err
			}
			defer env.Close()
			if env.CA.HasRootKey() {
				return errors.New("the root key is on this server already; nothing to import")
			}
			pass, err := c.passphrase(passFile, "Passphrase of the exported root key: ", false)
			if err != nil {
				return err
			}
			if err := env.CA.ImportRootKey(sealed, pass); err != nil {
				return err
			}
			fmt.Fprintln(c.out, "The root key is back on this server. After `warden ca rotate`, move it off again with `warden ca export-root-key`.")
			return nil
		},
	}
	cmd.Flags().StringVar(&in, "in", "", "the sealed key file export-root-key wrote")
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "read the passphrase from this file instead of the terminal")
	_ = cmd.MarkFlagRequired("in")
	return cmd
}
