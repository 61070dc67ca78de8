package ota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/warden-iot/warden/internal/audit"
	"github.com/warden-iot/warden/internal/store"
)

// RolloutSpec is what an operator asks for.
type RolloutSpec struct {
	Image            string            `json:"image"`             // SHA-256, or a unique prefix of at least 8 hex digits
	Model            string            `json:"model"`             // empty: the image's model
	Tags             map[string]string `json:"tags"`              // every pair must match
	Stages           []int             `json:"stages"`            // cumulative percentages; empty: 100
	FailureThreshold float64           `json:"failure_threshold"` // fraction 0..1
	MinFinished      int               `json:"min_finished"`
	Timeout          time.Duration     `json:"timeout_ns"`
}

// Defaults for a rollout when the operator gives none.
const (
	DefaultFailureThreshold = 0.05
	DefaultMinFinished      = 20
	DefaultStageTimeout     = 30 * time.Minute
)

// ParseStages parses "1%,10%,50%,100%" (the % signs are optional).
func ParseStages(s string) ([]int, error) {
	var out []int
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSuffix(strings.TrimSpace(part), "%")
		n, err := strconv.Atoi(part)
		if err != nil || n < 1 || n > 100 {
			return nil, invalidf("stage %q is not a percentage from 1 to 100", part)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, invalidf("stages must grow: %d%% after %d%%", n, out[len(out)-1])
		}
		out = append(out, n)
	}
	if len(out) == 0 || out[len(out)-1] != 100 {
		return nil, invalidf("the last stage must be 100%% (every selected device), got %q", s)
	}
	return out, nil
}

// RolloutSummary is what CreateRollout reports besides the rollout.
type RolloutSummary struct {
	Selected int `json:"selected"` // devices that matched the selector
	Members  int `json:"members"`  // devices in the rollout
	Busy     int `json:"busy"`     // matched, but already in another unfinished rollout
	Skipped  int `json:"skipped"`  // members that will not be offered (already running it, or counter floor)
}

func (s *Service) resolveImage(ctx context.Context, ref string) (store.FirmwareImage, error) {
	ref = strings.ToLower(strings.TrimSpace(ref))
	if len(ref) == 64 {
		return s.st.GetFirmwareImage(ctx, ref)
	}
	if len(ref) < 8 {
		return store.FirmwareImage{}, invalidf("image %q: give the SHA-256 or at least its first 8 hex digits", ref)
	}
	imgs, err := s.st.ListFirmwareImages(ctx, "")
	if err != nil {
		return store.FirmwareImage{}, err
	}
	var found []store.FirmwareImage
	for _, im := range imgs {
		if strings.HasPrefix(im.SHA256, ref) {
			found = append(found, im)
		}
	}
	switch len(found) {
	case 0:
		return store.FirmwareImage{}, fmt.Errorf("image %s: %w (see `warden fw list`)", ref, store.ErrNotFound)
	case 1:
		return found[0], nil
	}
	return store.FirmwareImage{}, invalidf("image prefix %s matches %d images; give more digits", ref, len(found))
}

func newRolloutID() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return "ro-" + hex.EncodeToString(b[:])
}

// CreateRollout freezes the set of active devices that match the selector
// and are in no other unfinished rollout, orders them at random, and
// assigns each to the first stage whose share covers it. The first stage
// opens at once.
func (s *Service) CreateRollout(ctx context.Context, spec RolloutSpec, actor string) (store.Rollout, RolloutSummary, error) {
	var sum RolloutSummary
	img, err := s.resolveImage(ctx, spec.Image)
	if err != nil {
		return store.Rollout{}, sum, err
	}
	if spec.Model == "" {
		spec.Model = img.Model
	}
	if spec.Model != img.Model {
		return store.Rollout{}, sum, invalidf("image %s is for model %q, not %q", img.SHA256[:12], img.Model, spec.Model)
	}
	if len(spec.Stages) == 0 {
		spec.Stages = []int{100}
	}
	if spec.FailureThreshold < 0 || spec.FailureThreshold > 1 || math.IsNaN(spec.FailureThreshold) {
		return store.Rollout{}, sum, invalidf("failure threshold must be from 0%% to 100%%")
	}
	if spec.MinFinished < 0 || spec.Timeout < 0 {
		return store.Rollout{}, sum, invalidf("min-finished and timeout must not be negative")
	}
	if spec.Timeout == 0 {
		spec.Timeout = DefaultStageTimeout
	}
	if key, err := s.st.GetReleaseKey(ctx, img.KeyID); err != nil || key.Revoked() {
		return store.Rollout{}, sum, refusedf("image %s was signed by release key %s, which is no longer trusted", img.SHA256[:12], img.KeyID)
	}
	if !s.now().Before(img.ExpiresAt) {
		return store.Rollout{}, sum, refusedf("the release statement of image %s expired at %s; upload a fresh statement first", img.SHA256[:12], img.ExpiresAt.Format(time.RFC3339))
	}

	var ids []string
	f := store.DeviceFilter{State: store.StateActive, Model: spec.Model, Tags: spec.Tags, Limit: store.MaxListLimit}
	for {
		page, err := s.st.ListDevices(ctx, f)
		if err != nil {
			return store.Rollout{}, sum, err
		}
		for _, d := range page {
			sum.Selected++
			if _, _, err := s.st.ActiveRollout(ctx, d.ID); err == nil {
				sum.Busy++
				continue
			} else if !errors.Is(err, store.ErrNotFound) {
				return store.Rollout{}, sum, err
			}
			ids = append(ids, d.ID)
		}
		if len(page) < f.PageSize() {
			break
		}
		f.After = page[len(page)-1].ID
	}
	if len(ids) == 0 {
		return store.Rollout{}, sum, invalidf("no active device of model %q matches the selector%s (%d matched but are in another unfinished rollout)", spec.Model, tagText(spec.Tags), sum.Busy)
	}
	// A uniform random order, so no stage is biased by ID or age.
	for i := len(ids) - 1; i > 0; i-- {
		j, _ := rand.Int(rand.Reader, big.NewInt(int64(i+1)))
		ids[i], ids[j.Int64()] = ids[j.Int64()], ids[i]
	}
	now := s.now()
	cut := stageCuts(len(ids), spec.Stages)
	members := make([]store.RolloutDevice, len(ids))
	stage := 0
	for i, id := range ids {
		for i >= cut[stage] {
			stage++
		}
		m := store.RolloutDevice{DeviceID: id, Stage: stage, State: store.DevicePending, UpdatedAt: now}
		if fw, err := s.st.GetDeviceFirmware(ctx, id); err == nil {
			if reason := skipReason(img, fw); reason != "" {
				m.State, m.Reason = store.DeviceSkipped, reason
				sum.Skipped++
			}
		} else if !errors.Is(err, store.ErrNotFound) {
			return store.Rollout{}, sum, err
		}
		members[i] = m
	}
	r := store.Rollout{
		ID: newRolloutID(), ImageSHA256: img.SHA256, Model: spec.Model, Tags: spec.Tags, Stages: spec.Stages,
		FailureThreshold: spec.FailureThreshold, MinFinished: spec.MinFinished, Timeout: spec.Timeout,
		State: store.RolloutRunning, StageStartedAt: now, CreatedAt: now, UpdatedAt: now,
	}
	if r.Tags == nil {
		r.Tags = map[string]string{}
	}
	for i := range members {
		members[i].RolloutID = r.ID
	}
	if err := s.st.CreateRollout(ctx, r, members); err != nil {
		return store.Rollout{}, sum, err
	}
	sum.Members = len(members)
	s.progress.WithLabelValues(string(store.RolloutRunning)).Inc()
	s.audit.Record(ctx, audit.Event{Action: "rollout.create", Outcome: "done", Actor: actor, Subject: "rollout:" + r.ID, Details: map[string]string{
		"image": img.SHA256, "version": img.Version, "model": r.Model, "members": strconv.Itoa(len(members)), "stages": stagesText(r.Stages),
	}})
	s.log.Info("rollout created", "rollout", r.ID, "image", img.SHA256, "version", img.Version, "members", len(members), "stages", stagesText(r.Stages))
	s.notifyStage(ctx, r)
	return r, sum, nil
}

// stageCuts returns, per stage, how many of n devices it covers in all:
// ceil(n*pct/100), at least one for the first stage.
func stageCuts(n int, stages []int) []int {
	cut := make([]int, len(stages))
	for i, p := range stages {
		cut[i] = (n*p + 99) / 100
		if cut[i] < 1 {
			cut[i] = 1
		}
		if i > 0 && cut[i] < cut[i-1] {
			cut[i] = cut[i-1]
		}
	}
	cut[len(cut)-1] = n
	return cut
}

// skipReason says why a device must not be offered img, or "".
func skipReason(img store.FirmwareImage, fw store.DeviceFirmware) string {
	if img.SecurityCounter < fw.SecurityCounter {
		return fmt.Sprintf("image security counter %d is below the device's %d (anti-rollback)", img.SecurityCounter, fw.SecurityCounter)
	}
	if fw.Version == img.Version {
		return "already running " + img.Version
	}
	return ""
}

func tagText(tags map[string]string) string {
	if len(tags) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		parts = append(parts, k+"="+tags[k])
	}
	return " with tags " + strings.Join(parts, ",")
}

func stagesText(st []int) string {
	parts := make([]string, len(st))
	for i, p := range st {
		parts[i] = strconv.Itoa(p) + "%"
	}
	return strings.Join(parts, ",")
}

// StageStatus counts one stage's devices by state.
type StageStatus struct {
	Percent int            `json:"percent"`
	Devices int            `json:"devices"`
	States  map[string]int `json:"states"`
}

// Status is a rollout's progress.
type Status struct {
	Rollout store.Rollout       `json:"rollout"`
	Image   store.FirmwareImage `json:"image"`
	Stages  []StageStatus       `json:"stages"`
	Totals  map[string]int      `json:"totals"`
	Members int                 `json:"members"`
}

// RolloutStatus returns a rollout with its per-stage counts.
func (s *Service) RolloutStatus(ctx context.Context, id string) (Status, error) {
	r, err := s.st.GetRollout(ctx, id)
	if err != nil {
		return Status{}, err
	}
	img, err := s.st.GetFirmwareImage(ctx, r.ImageSHA256)
	if err != nil {
		return Status{}, err
	}
	counts, err := s.st.RolloutCounts(ctx, id)
	if err != nil {
		return Status{}, err
	}
	st := Status{Rollout: r, Image: img, Stages: make([]StageStatus, len(r.Stages)), Totals: map[string]int{}}
	for i, p := range r.Stages {
		st.Stages[i] = StageStatus{Percent: p, States: map[string]int{}}
	}
	for _, c := range counts {
		if c.Stage < 0 || c.Stage >= len(st.Stages) {
			continue
		}
		st.Stages[c.Stage].States[c.State] += c.N
		st.Stages[c.Stage].Devices += c.N
		st.Totals[c.State] += c.N
		st.Members += c.N
	}
	return st, nil
}

// Rollouts lists rollouts, newest first.
func (s *Service) Rollouts(ctx context.Context) ([]store.Rollout, error) {
	return s.st.ListRollouts(ctx)
}

// RolloutDevices lists a rollout's members.
func (s *Service) RolloutDevices(ctx context.Context, id string, f store.RolloutDeviceFilter) ([]store.RolloutDevice, error) {
	return s.st.ListRolloutDevices(ctx, id, f)
}

// Pause stops offering the image; devices already downloading finish.
func (s *Service) Pause(ctx context.Context, id, reason, actor string) (store.Rollout, error) {
	return s.transition(ctx, id, store.RolloutPaused, reason, actor, store.RolloutRunning)
}

// Resume reopens a paused rollout; the current stage's timer restarts.
func (s *Service) Resume(ctx context.Context, id, actor string) (store.Rollout, error) {
	r, err := s.transition(ctx, id, store.RolloutRunning, "resumed", actor, store.RolloutPaused)
	if err == nil {
		s.notifyStage(ctx, r)
	}
	return r, err
}

// Abort ends a rollout for good; devices are offered nothing more from it.
func (s *Service) Abort(ctx context.Context, id, reason, actor string) (store.Rollout, error) {
	return s.transition(ctx, id, store.RolloutAborted, reason, actor, store.RolloutRunning, store.RolloutPaused)
}

func (s *Service) transition(ctx context.Context, id string, to store.RolloutState, reason, actor string, from ...store.RolloutState) (store.Rollout, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.st.GetRollout(ctx, id)
	if err != nil {
		return r, err
	}
	if !slices.Contains(from, r.State) {
		return r, fmt.Errorf("rollout %s is %s: cannot make it %s: %w", id, r.State, to, store.ErrConflict)
	}
	return r, s.setState(ctx, &r, to, reason, actor)
}

// setState moves r (under s.mu) and audits it.
func (s *Service) setState(ctx context.Context, r *store.Rollout, to store.RolloutState, reason, actor string) error {
	from := r.State
	now := s.now()
	r.State, r.Reason, r.UpdatedAt = to, reason, now
	if to == store.RolloutRunning {
		r.StageStartedAt = now
	}
	if err := s.st.UpdateRollout(ctx, *r, from); err != nil {
		return err
	}
	s.progress.WithLabelValues(string(to)).Inc()
	s.audit.Record(ctx, audit.Event{Action: "rollout." + verb(to), Outcome: "done", Actor: actor, Subject: "rollout:" + r.ID, Reason: reason,
		Details: map[string]string{"stage": strconv.Itoa(r.Stage)}})
	s.log.Info("rollout "+verb(to), "rollout", r.ID, "stage", r.Stage, "reason", reason, "by", actor)
	return nil
}

func verb(s store.RolloutState) string {
	switch s {
	case store.RolloutRunning:
		return "resume"
	case store.RolloutPaused:
		return "pause"
	case store.RolloutAborted:
		return "abort"
	}
	return "complete"
}

// Tick judges every running rollout: it times out devices of stages past
// their timeout, pauses a rollout whose failures cross its threshold, and
// opens the next stage once the current one is done.
func (s *Service) Tick(ctx context.Context) error {
	rs, err := s.st.ListRollouts(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rs {
		if r.State != store.RolloutRunning {
			continue
		}
		if err := s.evaluate(ctx, r.ID); err != nil {
			errs = append(errs, fmt.Errorf("rollout %s: %w", r.ID, err))
		}
	}
	return errors.Join(errs...)
}

// Run calls Tick every interval until ctx ends.
func (s *Service) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.Tick(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("rollout evaluation failed; retrying at the next tick", "error", err)
			}
		}
	}
}

type tally struct {
	total, booted, failed, timedOut, skipped int
}

func (t tally) judged() int     { return t.booted + t.failed }
func (t tally) unfinished() int { return t.total - t.booted - t.failed - t.timedOut - t.skipped }

// need is how many judged devices a stage must have before its failure
// ratio counts, and before it may close.
func (t tally) need(minFinished int) int {
	return min(minFinished, t.total-t.skipped)
}

func (s *Service) tally(ctx context.Context, r store.Rollout) (tally, error) {
	counts, err := s.st.RolloutCounts(ctx, r.ID)
	if err != nil {
		return tally{}, err
	}
	var t tally
	for _, c := range counts {
		if c.Stage > r.Stage {
			continue
		}
		t.total += c.N
		switch c.State {
		case store.DeviceBooted:
			t.booted += c.N
		case store.DeviceFailed, store.DeviceRolledBack:
			t.failed += c.N
		case store.DeviceTimedOut:
			t.timedOut += c.N
		case store.DeviceSkipped:
			t.skipped += c.N
		}
	}
	return t, nil
}

func (s *Service) evaluate(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.st.GetRollout(ctx, id)
	if err != nil || r.State != store.RolloutRunning {
		return err
	}
	t, err := s.tally(ctx, r)
	if err != nil {
		return err
	}
	if reason := s.overThreshold(r, t); reason != "" {
		if err := s.setState(ctx, &r, store.RolloutPaused, reason, "warden"); err != nil {
			return err
		}
		s.raise(ctx, Alert{Kind: "rollout.paused", Subject: "rollout:" + r.ID, Message: "rollout " + r.ID + " paused: " + reason})
		return nil
	}
	now := s.now()
	if t.unfinished() > 0 && !now.Before(r.StageStartedAt.Add(r.Timeout)) {
		n, err := s.st.TimeOutRolloutDevices(ctx, r.ID, r.Stage, now)
		if err != nil {
			return err
		}
		if n > 0 {
			s.log.Warn("devices did not finish within the stage timeout", "rollout", r.ID, "stage", r.Stage, "devices", n, "timeout", r.Timeout)
			if t, err = s.tally(ctx, r); err != nil {
				return err
			}
		}
	}
	if t.unfinished() > 0 {
		return nil
	}
	if t.judged() < t.need(r.MinFinished) {
		reason := fmt.Sprintf("stage %d (%d%%): only %d devices finished before the stage timeout, %d needed (%d timed out); resume to wait another %s",
			r.Stage+1, r.Stages[r.Stage], t.judged(), t.need(r.MinFinished), t.timedOut, r.Timeout)
		if err := s.setState(ctx, &r, store.RolloutPaused, reason, "warden"); err != nil {
			return err
		}
		s.raise(ctx, Alert{Kind: "rollout.stalled", Subject: "rollout:" + r.ID, Message: "rollout " + r.ID + " paused: " + reason})
		return nil
	}
	if r.Stage == len(r.Stages)-1 {
		return s.setState(ctx, &r, store.RolloutCompleted,
			fmt.Sprintf("%d booted, %d failed, %d timed out, %d skipped", t.booted, t.failed, t.timedOut, t.skipped), "warden")
	}
	from := r.State
	r.Stage++
	r.StageStartedAt, r.UpdatedAt = now, now
	if err := s.st.UpdateRollout(ctx, r, from); err != nil {
		return err
	}
	s.progress.WithLabelValues("stage").Inc()
	s.audit.Record(ctx, audit.Event{Action: "rollout.stage", Outcome: "done", Actor: "warden", Subject: "rollout:" + r.ID,
		Details: map[string]string{"stage": strconv.Itoa(r.Stage), "percent": strconv.Itoa(r.Stages[r.Stage])}})
	s.log.Info("rollout stage opened", "rollout", r.ID, "stage", r.Stage+1, "percent", r.Stages[r.Stage])
	go s.notifyStage(context.WithoutCancel(ctx), r)
	return nil
}

// overThreshold returns why the rollout must pause, or "".
func (s *Service) overThreshold(r store.Rollout, t tally) string {
	j := t.judged()
	if j == 0 || j < t.need(r.MinFinished) {
		return ""
	}
	if float64(t.failed)/float64(j) <= r.FailureThreshold {
		return ""
	}
	return fmt.Sprintf("failure threshold crossed: %d of %d finished devices failed (%.1f%% > %.1f%%)",
		t.failed, j, 100*float64(t.failed)/float64(j), 100*r.FailureThreshold)
}

// notifyStage pushes offers to the open stages' devices that have not been
// offered yet; devices that are offline get theirs when they next check.
func (s *Service) notifyStage(ctx context.Context, r store.Rollout) {
	n := s.currentNotifier()
	if n == nil || r.State != store.RolloutRunning {
		return
	}
	img, err := s.st.GetFirmwareImage(ctx, r.ImageSHA256)
	if err != nil {
		s.log.Error("cannot notify devices of a rollout", "rollout", r.ID, "error", err)
		return
	}
	f := store.RolloutDeviceFilter{State: store.DevicePending, Limit: store.MaxListLimit}
	for {
		page, err := s.st.ListRolloutDevices(ctx, r.ID, f)
		if err != nil {
			s.log.Error("cannot notify devices of a rollout", "rollout", r.ID, "error", err)
			return
		}
		for _, m := range page {
			if m.Stage <= r.Stage {
				n.Notify(ctx, m.DeviceID, s.offer(r, img, m.DeviceID))
			}
		}
		if len(page) < f.PageSize() {
			return
		}
		f.After = page[len(page)-1].DeviceID
	}
}
