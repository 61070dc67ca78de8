package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/spf13/cobra"

	"github.com/warden-iot/warden/internal/audit"
)

func (c *cli) auditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Check the audit log's hash chain, show its newest entries, print its head",
		Long: `Warden records every security-relevant event (refused connections and
subscriptions, revocations, relayed commands, operator actions) in
warden-data/audit.log, one JSON object per line. Each entry carries a
sequence number and the SHA-256 of the entry before it, and the head file
beside it (audit.log.head) names the newest committed entry. So:

  warden audit verify   finds entries that were edited, removed, inserted or
                        reordered, and entries cut off the end, and says where
  warden audit tail     shows the newest entries (--follow keeps watching)
  warden audit head     prints the head, to keep on another machine

What the chain cannot prove on its own: whoever can write the data
directory can also rewrite the chain from some entry on, recompute every
hash and the head, and verify will find nothing wrong. To catch that, keep
copies of the head somewhere this server cannot write: ship the output of
` + "`warden audit head`" + ` (or of ` + "`warden audit verify --json`" + `) to another system
regularly, from cron or your log shipper, and check later with
` + "`warden audit verify --anchor SEQ:HASH`" + ` that the entry is still there with
the same hash. The format and its limits are in docs/audit.md.

These commands only read the files; they work while the server runs.`,
	}
	cmd.AddCommand(c.auditVerifyCmd(), c.auditTailCmd(), c.auditHeadCmd())
	return cmd
}

func (c *cli) auditPath(cmd *cobra.Command) (string, error) {
	cfg, _, err := c.load(cmd)
	if err != nil {
		return "", err
	}
	return cfg.Paths().AuditLog, nil
}

func (c *cli) auditVerifyCmd() *cobra.Command {
	var asJSON bool
	var anchors []string
	cmd := &cobra.Command{
		Use:   "verify [--anchor SEQ:HASH]... [--json]",
		Short: "Check the audit log's hash chain and head; exit 1 if it was tampered with",
		Long: `verify reads the whole audit log and checks that every entry's hash matches
its content, that each one names the hash of the entry before it, that the
sequence numbers run 1, 2, 3, ... without gaps or repeats, and that the log
reaches the entry its head file names. For each problem it prints the line
and what is wrong, e.g.

  line 57: entry 57 was edited: its hash does not match its content
  line 58: entry 58 is missing or entries were reordered (entry 59 follows 57)
  the log ends at entry 80 but the head says 85: entries were removed from the end

It exits 0 when the log is intact and 1 when it is not (or cannot be read).
Notes are not tampering: lines from Warden versions before the chain, or a
head a few entries behind the log (an append in progress, or a crash before
its commit).

--anchor SEQ:HASH (repeatable) checks that entry SEQ still has the hash you
recorded earlier, e.g. from ` + "`warden audit head`" + ` kept on another machine: that
catches a chain rewritten consistently, which the chain alone cannot.`,
		Example: `  warden audit verify
  warden audit verify --anchor "$(ssh vault cat warden-head-2026-11-01)"
  warden audit verify --json | jq .last`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var heads []audit.Head
			for _, a := range anchors {
				h, err := audit.ParseAnchor(a)
				if err != nil {
					return err
				}
				heads = append(heads, h)
			}
			path, err := c.auditPath(cmd)
			if err != nil {
				return err
			}
			rep, err := audit.Verify(path, heads...)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("no audit log at %s: nothing has been audited yet, or --data names the wrong directory", path)
			}
			if err != nil {
				return err
			}
			if asJSON {
				if err := c.printJSON(rep); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(c.out, rep.Summary())
				for _, p := range rep.Problems {
					fmt.Fprintf(c.out, "  %s\n", p)
				}
				if rep.MoreProblems > 0 {
					fmt.Fprintf(c.out, "  ... and %d more problems\n", rep.MoreProblems)
				}
				for _, n := range rep.Notes {
					fmt.Fprintf(c.out, "note: %s\n", n)
				}
				if rep.OK && rep.Last != nil {
					fmt.Fprintf(c.out, "last entry: %s (keep it off this machine; check later with --anchor)\n", rep.Last)
				}
			}
			if !rep.OK {
				return &exitError{code: 1} // the report is the message
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().StringArrayVar(&anchors, "anchor", nil, "SEQ:HASH that entry SEQ must still have (repeatable)")
	return cmd
}

func (c *cli) auditTailCmd() *cobra.Command {
	var (
		n                      int
		follow, asJSON         bool
		action, actor, subject string
		interval               time.Duration
	)
	cmd := &cobra.Command{
		Use:   "tail [-n 20] [--follow] [--action PREFIX] [--json]",
		Short: "Show the newest audit entries, and with --follow the ones that come",
		Long: `tail prints the newest audit entries, oldest first, one per line:

  time (UTC)  #seq  outcome  action  actor → subject  reason  key=value...

Values that contain spaces or anything unprintable are quoted, so a
device cannot put terminal control sequences on your screen. --json prints
one JSON object per line instead (the entry's fields plus seq, prev and
hash). --follow keeps printing new entries until Ctrl-C; it polls the file
(--interval), so it works from any shell that can read the data directory.

tail shows the entries as they are in the file; ` + "`warden audit verify`" + ` says
whether they can be trusted.`,
		Example: `  warden audit tail -n 50
  warden audit tail --follow --action mqtt.
  warden audit tail --subject device:pump7 --json | jq .reason`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n < 0 || n > audit.MaxLimit {
				return fmt.Errorf("-n must be between 0 and %d", audit.MaxLimit)
			}
			path, err := c.auditPath(cmd)
			if err != nil {
				return err
			}
			f := audit.Filter{Action: action, Actor: actor, Subject: subject, Newest: true, Legacy: true, Limit: max(n, 1)}
			p, err := audit.Read(path, f)
			if err != nil {
				return err
			}
			if n > 0 {
				if err := c.printEntries(p.Entries, asJSON); err != nil {
					return err
				}
			}
			if !follow {
				return nil
			}
			return c.followAudit(cmd.Context(), path, audit.Filter{Action: action, Actor: actor, Subject: subject, Limit: audit.MaxLimit}, p.Next, interval, asJSON)
		},
	}
	cmd.Flags().IntVarP(&n, "lines", "n", 20, "how many entries to show (0: none, with --follow only new ones)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new entries until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	cmd.Flags().StringVar(&action, "action", "", "only entries whose action starts with this (e.g. mqtt. or device.revoke)")
	cmd.Flags().StringVar(&actor, "actor", "", "only entries by this actor (e.g. device:pump7, operator)")
	cmd.Flags().StringVar(&subject, "subject", "", "only entries about this subject (e.g. device:pump7)")
	durationVar(cmd.Flags(), &interval, "interval", time.Second, "how often --follow looks for new entries")
	return cmd
}

// followAudit prints entries after seq next as they are appended, until
// ctx ends (Ctrl-C).
func (c *cli) followAudit(ctx context.Context, path string, f audit.Filter, next uint64, every time.Duration, asJSON bool) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
		for {
			f.AfterSeq = next
			p, err := audit.Read(path, f)
			if err != nil {
				return err
			}
			if err := c.printEntries(p.Entries, asJSON); err != nil {
				return err
			}
			next = max(next, p.Next)
			if !p.More || ctx.Err() != nil {
				break
			}
		}
	}
}

func (c *cli) printEntries(es []audit.Entry, asJSON bool) error {
	enc := json.NewEncoder(c.out) // one object per line
	enc.SetEscapeHTML(false)
	for _, e := range es {
		if asJSON {
			if err := enc.Encode(e); err != nil {
				return err
			}
			continue
		}
		if _, err := fmt.Fprintln(c.out, audit.FormatEntry(e)); err != nil {
			return err
		}
	}
	return nil
}

func (c *cli) auditHeadCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "head [--json]",
		Short: "Print the audit log's head as SEQ:HASH, to keep off this machine",
		Long: `head prints the newest committed audit entry as SEQ:HASH (the content of
audit.log.head). Copy it regularly to a system this server cannot write:
later, ` + "`warden audit verify --anchor SEQ:HASH`" + ` proves that the log still holds
that entry unchanged, and so everything before it, even against someone who
rewrote the whole chain on this machine. It reads one small file, so it is
cheap to run every minute.`,
		Example: `  warden audit head | ssh vault "cat >> warden-heads.txt"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := c.auditPath(cmd)
			if err != nil {
				return err
			}
			h, err := audit.ReadHead(path)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("no audit log head at %s: nothing has been audited yet, or --data names the wrong directory", audit.HeadPath(path))
			}
			if err != nil {
				return err
			}
			if h.Seq == 0 {
				return errors.New("the audit log has no committed entries yet; there is nothing to anchor")
			}
			if asJSON {
				return c.printJSON(struct {
					Path   string `json:"path"`
					Seq    uint64 `json:"seq"`
					Hash   string `json:"hash"`
					Anchor string `json:"anchor"`
				}{path, h.Seq, h.Hash, h.String()})
			}
			fmt.Fprintln(c.out, h)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
