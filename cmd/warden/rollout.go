package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/warden-iot/warden/internal/ota"
	"github.com/warden-iot/warden/internal/store"
)

func (c *cli) rolloutCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Deploy an uploaded image to devices in stages, with a failure threshold",
		Long: `A rollout offers one image to a frozen, randomly ordered set of devices
(selected by model and tags when it is created), stage by stage. A stage opens
the next one only when all its devices finished (booted, failed, rolled back,
or timed out after --timeout) and at least min(--min-finished, stage size) of
them booted or failed. If the failed share of finished devices crosses
--failure-threshold, the rollout pauses and raises an alert. A device is never
offered an image whose security counter is below the one it last reported.`,
	}
	cmd.AddCommand(c.rolloutCreateCmd(), c.rolloutStatusCmd(), c.rolloutListCmd(),
		c.rolloutVerbCmd("pause", "Stop offering the image (downloads under way finish)", true),
		c.rolloutVerbCmd("resume", "Resume a paused rollout; the current stage's timer restarts", false),
		c.rolloutVerbCmd("abort", "End a rollout for good", true),
		c.rolloutDevicesCmd())
	return cmd
}

// parseSelect reads "model=M,tag=k=v,...".
func parseSelect(s string) (string, map[string]string, error) {
	var model string
	tags := map[string]string{}
	if s == "" {
		return "", tags, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		key, val, ok := strings.Cut(part, "=")
		switch {
		case ok && key == "model":
			model = val
		case ok && key == "tag":
			k, v, ok := strings.Cut(val, "=")
			if !ok || k == "" {
				return "", nil, fmt.Errorf("--select: %q: write a tag as tag=key=value", part)
			}
			tags[k] = v
		default:
			return "", nil, fmt.Errorf("--select: %q: expected model=M or tag=key=value", part)
		}
	}
	return model, tags, nil
}

// parsePercent reads "5%" or "0.05".
func parsePercent(s string) (float64, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || f < 0 || f > 100 {
			return 0, fmt.Errorf("%q is not a percentage from 0%% to 100%%", s)
		}
		return f / 100, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f > 1 {
		return 0, fmt.Errorf("%q is not a fraction from 0 to 1 (or write a percentage: 5%%)", s)
	}
	return f, nil
}

func (c *cli) rolloutCreateCmd() *cobra.Command {
	var image, sel, stages, threshold string
	var minFinished int
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "create --image SHA [--select model=M[,tag=k=v]] [--stages 1%,10%,50%,100%]",
		Short: "Start a staged rollout of an uploaded image",
		Example: `  warden rollout create --image 3f2a9c01 --select model=sensor-v2,tag=site=berlin \
      --stages 1%,10%,50%,100% --failure-threshold 5% --min-finished 20 --timeout 30m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			model, tags, err := parseSelect(sel)
			if err != nil {
				return err
			}
			st, err := ota.ParseStages(stages)
			if err != nil {
				return fmt.Errorf("--stages: %w", err)
			}
			th, err := parsePercent(threshold)
			if err != nil {
				return fmt.Errorf("--failure-threshold: %w", err)
			}
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			out, err := svc.CreateRollout(cmd.Context(), ota.RolloutSpec{
				Image: image, Model: model, Tags: tags, Stages: st, FailureThreshold: th, MinFinished: minFinished, Timeout: timeout,
			})
			if err != nil {
				return err
			}
			r, s := out.Rollout, out.Summary
			fmt.Fprintf(c.out, "Created rollout %s of image %s to %d devices (model %s)\n", r.ID, r.ImageSHA256[:12], s.Members, r.Model)
			if s.Busy > 0 {
				fmt.Fprintf(c.out, "  %d matching devices are in another unfinished rollout and were left out\n", s.Busy)
			}
			if s.Skipped > 0 {
				fmt.Fprintf(c.out, "  %d devices will be skipped (already running it, or it would lower their security counter)\n", s.Skipped)
			}
			fmt.Fprintf(c.out, "  stages %s; stage 1 is open. Follow it with: warden rollout status %s --watch\n", stages, r.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&image, "image", "", "image SHA-256 (or its first 8+ hex digits) from `warden fw list`")
	f.StringVar(&sel, "select", "", "devices: model=M (default: the image's model), tag=key=value (repeatable, comma-separated)")
	f.StringVar(&stages, "stages", "100%", "cumulative shares of the devices per stage, ending at 100%")
	f.StringVar(&threshold, "failure-threshold", "5%", "pause when more than this share of finished devices failed")
	f.IntVar(&minFinished, "min-finished", ota.DefaultMinFinished, "finished devices needed before a stage is judged (capped at the stage size)")
	durationVar(f, &timeout, "timeout", ota.DefaultStageTimeout, "how long a stage waits for its devices, e.g. 30m or 2d")
	_ = cmd.MarkFlagRequired("image")
	return cmd
}

var stateOrder = []string{store.DevicePending, store.DeviceOffered, store.DeviceDownloading, store.DeviceVerified, store.DeviceInstalling,
	store.DeviceBooted, store.DeviceFailed, store.DeviceRolledBack, store.DeviceTimedOut, store.DeviceSkipped}

func countsText(m map[string]int) string {
	var parts []string
	for _, s := range stateOrder {
		if n := m[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func bar(done, total, width int) string {
	if total == 0 {
		return "[" + strings.Repeat(" ", width) + "]    -"
	}
	n := done * width / total
	return fmt.Sprintf("[%s%s] %3d%%", strings.Repeat("#", n), strings.Repeat(".", width-n), done*100/total)
}

func printStatus(w io.Writer, st ota.Status, now time.Time) {
	r := st.Rollout
	fmt.Fprintf(w, "Rollout %s  %s", r.ID, strings.ToUpper(string(r.State)))
	if !r.State.Final() {
		fmt.Fprintf(w, "  stage %d of %d (%d%%), open for %s", r.Stage+1, len(r.Stages), r.Stages[r.Stage], now.Sub(r.StageStartedAt).Truncate(time.Second))
	}
	fmt.Fprintln(w)
	if r.Reason != "" {
		fmt.Fprintf(w, "  reason: %s\n", r.Reason)
	}
	fmt.Fprintf(w, "Image   %s  model %s  version %s  security counter %d\n", st.Image.SHA256, st.Image.Model, st.Image.Version, st.Image.SecurityCounter)
	fmt.Fprintf(w, "Policy  failure threshold %.1f%%, min finished %d, stage timeout %s\n\n", 100*r.FailureThreshold, r.MinFinished, r.Timeout)
	for i, s := range st.Stages {
		finished := s.States[store.DeviceBooted] + s.States[store.DeviceFailed] + s.States[store.DeviceRolledBack] + s.States[store.DeviceTimedOut] + s.States[store.DeviceSkipped]
		mark := " "
		if i == r.Stage && !r.State.Final() {
			mark = ">"
		}
		fmt.Fprintf(w, "%s stage %d  %3d%%  %5d devices  %s  %s\n", mark, i+1, s.Percent, s.Devices, bar(finished, s.Devices, 30), countsText(s.States))
	}
	fmt.Fprintf(w, "\n  total  %d devices: %s\n", st.Members, countsText(st.Totals))
}

func (c *cli) rolloutStatusCmd() *cobra.Command {
	var asJSON, watch bool
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "status ID [--watch]",
		Short: "Show a rollout's progress per stage, with counts per device state",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			return c.watch(cmd.Context(), watch && !asJSON, every, func() (bool, error) {
				st, err := svc.RolloutStatus(cmd.Context(), args[0])
				if err != nil {
					return false, err
				}
				if asJSON {
					return false, c.printJSON(st)
				}
				printStatus(c.out, st, time.Now())
				return st.Rollout.State == store.RolloutRunning, nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&watch, "watch", false, "print again every --every until the rollout stops running")
	durationVar(cmd.Flags(), &every, "every", 5*time.Second, "interval for --watch")
	return cmd
}

func (c *cli) rolloutListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List rollouts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			rs, err := svc.Rollouts(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return c.printJSON(rs)
			}
			rows := make([][]string, 0, len(rs))
			for _, r := range rs {
				rows = append(rows, []string{r.ID, string(r.State), fmt.Sprintf("%d/%d", r.Stage+1, len(r.Stages)), r.ImageSHA256[:12], r.Model,
					r.CreatedAt.Format(time.RFC3339), r.Reason})
			}
			c.table([]string{"ID", "STATE", "STAGE", "IMAGE", "MODEL", "CREATED", "REASON"}, rows)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (c *cli) rolloutVerbCmd(verb, short string, withReason bool) *cobra.Command {
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
			var r store.Rollout
			switch verb {
			case "pause":
				r, err = svc.PauseRollout(cmd.Context(), args[0], reason)
			case "resume":
				r, err = svc.ResumeRollout(cmd.Context(), args[0])
			default:
				r, err = svc.AbortRollout(cmd.Context(), args[0], reason)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "Rollout %s is now %s (stage %d of %d)\n", r.ID, r.State, r.Stage+1, len(r.Stages))
			return nil
		},
	}
	if withReason {
		cmd.Flags().StringVar(&reason, "reason", "operator", "why, for the audit log")
	}
	return cmd
}

func (c *cli) rolloutDevicesCmd() *cobra.Command {
	var state string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "devices ID [--state S]",
		Short: "List a rollout's devices with their state and reason",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc, done, err := c.openService(cmd)
			if err != nil {
				return err
			}
			defer done()
			var all []store.RolloutDevice
			f := store.RolloutDeviceFilter{State: state, Limit: store.MaxListLimit}
			for {
				page, err := svc.RolloutDevices(cmd.Context(), args[0], f)
				if err != nil {
					return err
				}
				all = append(all, page...)
				if len(page) < f.PageSize() {
					break
				}
				f.After = page[len(page)-1].DeviceID
			}
			if asJSON {
				return c.printJSON(all)
			}
			rows := make([][]string, 0, len(all))
			for _, d := range all {
				rows = append(rows, []string{d.DeviceID, strconv.Itoa(d.Stage + 1), d.State, d.UpdatedAt.Format(time.RFC3339), d.Reason})
			}
			c.table([]string{"DEVICE", "STAGE", "STATE", "UPDATED", "REASON"}, rows)
			return nil
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only devices in this state (e.g. failed)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
