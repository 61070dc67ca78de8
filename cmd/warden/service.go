package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/warden-iot/warden/internal/identity"
	"github.com/warden-iot/warden/internal/store"
)

func (c *cli) serviceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Register back-end services that read fleet/# or command devices",
		Long: `Services are back-end identities (dashboards, ingest pipelines, command
senders). They connect to the broker with their own certificate
(URI SAN urn:warden:service:NAME) and client ID = NAME.

Roles:
  reader     may subscribe to fleet/# (every device's relayed uplinks)
  commander  reader rights, and may publish fleet/<id>/down/<channel>,
             which Warden forwards to the device as private/<id>/down/<channel>`,
	}
	cmd.AddCommand(c.serviceAddCmd(), c.serviceListCmd(), c.serviceRevokeCmd())
	return cmd
}

func (c *cli) serviceAddCmd() *cobra.Command {
	var role, outDir string
	cmd := &cobra.Command{
		Use:     "add NAME --role reader|commander --out DIR",
		Short:   "Generate a key for a service, issue its certificate and register it",
		Example: `  warden service add dashboard --role reader --out ./services`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := identity.ValidateServiceName(name); err != nil {
				return err
			}
			if err := identity.ValidateRole(role); err != nil {
				return err
			}
			svc, _, done, err := c.openIssuing(cmd, outDir)
			if err != nil {
				return err
			}
			defer done()
			km, err := newKeyMaterial(name, "pem")
			if err != nil {
				return err
			}
			keyPath := filepath.Join(outDir, name+".key")
			certPath := filepath.Join(outDir, name+".crt")
			issued, err := svc.AddService(cmd.Context(), name, role, km.csrDER)
			if err != nil {
				return err
			}
			if err := writeFiles(certPath, []byte(issued.CertificatePEM), keyPath, km.key); err != nil {
				return fmt.Errorf("service %s is registered but its files could not be written (%w); revoke it with `warden service revoke %s` and add it again", name, err, name)
			}
			fmt.Fprintf(c.out, "Registered service %s (%s)\n  certificate  %s\n  key          %s\n  root to pin  %s\n", name, role, certPath, keyPath, filepath.Join(outDir, "ca.crt"))
			return nil
		},
	}
	cmd.Flags().StringVar(&role, "role", "", "reader or commander")
	cmd.Flags().StringVar(&outDir, "out", "", "directory for NAME.crt, NAME.key and ca.crt")
	_ = cmd.MarkFlagRequired("role")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func (c *cli) serviceListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List services",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			ss, err := svc.ListServices(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				type serviceJSON struct {
					Name        string    `json:"name"`
					Role        string    `json:"role"`
					State       string    `json:"state"`
					StateReason string    `json:"state_reason,omitempty"`
					CreatedAt   time.Time `json:"created_at"`
				}
				out := make([]serviceJSON, len(ss))
				for i, s := range ss {
					out[i] = serviceJSON{s.Name, s.Role, string(s.State), s.StateReason, s.CreatedAt}
				}
				return c.printJSON(out)
			}
			rows := make([][]string, len(ss))
			for i, s := range ss {
				rows[i] = []string{s.Name, s.Role, string(s.State), s.CreatedAt.UTC().Format(time.RFC3339)}
			}
			c.table([]string{"NAME", "ROLE", "STATE", "CREATED"}, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (c *cli) serviceRevokeCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a service for good and cut its connection now",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			var s store.Service
			if s, err = svc.RevokeService(cmd.Context(), args[0], reason); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Service %s is now %s\n", s.Name, s.State)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the registry and the audit log)")
	return cmd
}
