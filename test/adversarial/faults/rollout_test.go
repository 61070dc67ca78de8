package faults

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/warden-iot/warden/internal/store"
	"github.com/warden-iot/warden/internal/wardentest"
	"github.com/warden-iot/warden/otaproto"
)

// Threat: a crash while a rollout changes stage loses the change (the
// rollout stalls in a finished stage), repeats it (a stage opened twice,
// or one skipped: devices of a later stage offered early), or leaves the
// rollout unable to go on.
//
// Control: internal/ota Service.finish records a device's end state and
// evaluate (under Service.mu) advances the stage with one conditional
// update (store UpdateRollout from the state it read); Service.Tick, every
// 5 s from Run, re-judges every running rollout after a restart; offers
// come only for stages up to Rollout.Stage (offerFor).
//
// Kill points, on one rollout of 8 devices in stages 25%, 50%, 100%:
//  1. when the last device of stage 1 has its "booted" in the audit log
//     (ota.booted, seen through inotify within a fraction of a
//     millisecond), which is written between its state and the stage
//     change: the change committed or not (both happen), and the
//     repeated report or Tick must finish it;
//  2. when the log says "rollout stage opened" for stage 3: committed,
//     its offers being pushed;
//  3. when the last device of the last stage has its ota.booted: the
//     rollout's completion committed or not.
//
// After each restart the rollout is in the stage it was in or the next,
// never further; devices of a stage not open get no offer; no stage opens
// twice (at most one rollout.stage audit entry each; a missing one, a
// kill between the commit and its audit entry, is logged as a NOTE) and
// the rollout completes once with every device booted.
func TestKillDuringRolloutStageChange(t *testing.T) {
	t.Parallel()
	n := startNode(t)
	rel := newRelease(t, n)
	img, stPath, sha := rel.sign(t, "fault-ro", "2.0.0", 2, 4096)
	n.mustCLI("fw", "upload", img, "--statement", stPath)
	dir := t.TempDir()
	ids := strings.Fields(n.mustCLI("device", "provision", "--count", "8", "--model", "fault-ro", "--out", dir))
	if len(ids) != 8 {
		t.Fatalf("provisioned %v", ids)
	}
	n.secrets.AddCredentialDir(t, dir)
	out := n.mustCLI("rollout", "create", "--image", sha, "--stages", "25%,50%,100%", "--min-finished", "1", "--failure-threshold", "50%")
	m := regexp.MustCompile(`Created rollout (\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("rollout create: %s", out)
	}
	rid := m[1]

	st := wardentest.OpenStore(t, n.Data)
	ctx := context.Background()
	members, err := st.ListRolloutDevices(ctx, rid, store.RolloutDeviceFilter{Limit: store.MaxListLimit})
	if err != nil || len(members) != 8 {
		t.Fatalf("rollout members: %v %v", members, err)
	}
	stage := map[int][]string{}
	for _, d := range members {
		stage[d.Stage] = append(stage[d.Stage], d.DeviceID)
	}
	if len(stage[0]) != 2 || len(stage[1]) != 2 || len(stage[2]) != 4 {
		t.Fatalf("stages: %v", stage)
	}
	rollout := func() store.Rollout {
		t.Helper()
		r, err := st.GetRollout(ctx, rid)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	memberState := func(id string) string {
		t.Helper()
		ms, err := st.ListRolloutDevices(ctx, rid, store.RolloutDeviceFilter{Limit: store.MaxListLimit})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.DeviceID == id {
				return m.State
			}
		}
		t.Fatalf("device %s is not in the rollout", id)
		return ""
	}
	dev := func(id string) *otaDevice {
		cert, _ := creds(dir, id).TLS(t)
		return &otaDevice{t: t, n: n, id: id, cert: cert, rollout: rid, sha: sha, state: memberState}
	}

	// Stage 1: the first device finishes; the server is killed as the
	// second one's boot is recorded.
	dev(stage[0][0]).finish()
	last := dev(stage[0][1])
	killOnAudit(t, n, last.finishAsync, `"action":"ota.booted"`, `"actor":"device:`+last.id+`"`)
	n.restart()
	r := rollout()
	t.Logf("kill 1 (ota.booted of the last device of stage 1): the stage change had committed: %v", r.Stage == 1)
	if r.Stage > 1 {
		t.Fatalf("STAGE SKIPPED: after kill 1 the rollout is at stage %d", r.Stage+1)
	}
	last.finish() // the device repeats the report it got no answer to
	wardentest.Eventually(t, 15*time.Second, "stage 2 to open after the restart", func() bool { return rollout().Stage == 1 })
	for _, id := range stage[2] {
		if dev(id).offered() {
			t.Errorf("STAGE SKIPPED: device %s of stage 3 was offered the image while stage 2 is open", id)
		}
	}

	// Stage 2: killed as the log says stage 3 opened.
	dev(stage[1][0]).finish()
	last = dev(stage[1][1])
	from := len(n.Log())
	go last.finishAsync()
	if !poll(time.Minute, func() bool {
		l := n.Log()
		return strings.Contains(l[min(from, len(l)):], `rollout stage opened`)
	}) {
		t.Fatalf("no stage opened:\n%s", n.Log())
	}
	n.kill()
	n.restart()
	if r := rollout(); r.Stage != 2 {
		t.Fatalf("after kill 2 (stage 3 opened in the log) the rollout is at stage %d, want 3", r.Stage+1)
	}
	last.finish()

	// Stage 3: killed as the last device's boot is recorded.
	for _, id := range stage[2][:3] {
		dev(id).finish()
	}
	last = dev(stage[2][3])
	killOnAudit(t, n, last.finishAsync, `"action":"ota.booted"`, `"actor":"device:`+last.id+`"`)
	n.restart()
	t.Logf("kill 3 (ota.booted of the last device): completion had committed: %v", rollout().State == store.RolloutCompleted)
	last.finish()
	wardentest.Eventually(t, 15*time.Second, "the rollout to complete", func() bool { return rollout().State == store.RolloutCompleted })

	counts, err := st.RolloutCounts(ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	booted := 0
	for _, c := range counts {
		if c.State == store.DeviceBooted {
			booted += c.N
		} else if c.N > 0 {
			t.Errorf("%d devices of stage %d ended %s", c.N, c.Stage+1, c.State)
		}
	}
	if booted != 8 {
		t.Errorf("%d of 8 devices booted", booted)
	}
	for _, s := range []string{"1", "2"} {
		got := auditCount(n.Data, `"action":"rollout.stage"`, `"subject":"rollout:`+rid+`"`, `"stage":"`+s+`"`)
		switch {
		case got > 1:
			t.Errorf("STAGE DUPLICATED: stage %s opened %d times in the audit log", s, got)
		case got == 0:
			// Written right after the commit: only a kill between the two
			// loses it.
			t.Logf("NOTE: the opening of stage %s is not in the audit log (killed between its commit and its audit entry)", s)
		}
	}
	if got := auditCount(n.Data, `"action":"rollout.complete"`, `"subject":"rollout:`+rid+`"`); got > 1 {
		t.Errorf("rollout completed %d times in the audit log", got)
	} else if got == 0 {
		t.Logf("NOTE: the completion is not in the audit log (killed between its commit and its audit entry)")
	}
	n.checkAtRest()
}

// killOnAudit runs action in the background and kills the server as soon
// as an audit entry with every fragment appears: the kernel reports each
// write to audit.log (inotify), so the kill lands within a fraction of a
// millisecond of the entry, while the server may still be in the step
// after it.
func killOnAudit(t *testing.T, n *node, action func(), fragments ...string) {
	t.Helper()
	before := auditCount(n.Data, fragments...)
	changes := watchDir(t, n.Data, true)
	go action()
	timeout := time.After(time.Minute)
	for {
		select {
		case name := <-changes:
			if name == "audit.log" && auditCount(n.Data, fragments...) > before {
				n.kill()
				return
			}
		case <-timeout:
			t.Fatalf("no audit entry %v", fragments)
		}
	}
}

// otaDevice is a device taking a rollout over HTTPS, as otaproto says:
// check, then report booted.
type otaDevice struct {
	t            *testing.T
	n            *node
	id           string
	cert         tls.Certificate
	rollout, sha string
	state        func(id string) string // the device's state in the rollout, from the store
}

func (d *otaDevice) client() *http.Client { return apiClient(d.t, d.n.Data, &d.cert) }

// offered asks for an offer (GET check) and reports whether it got one.
func (d *otaDevice) offered() bool {
	d.t.Helper()
	resp, err := d.client().Get("https://" + d.n.API + otaproto.PathCheck + "?version=1.0.0&security_counter=1")
	if err != nil {
		d.t.Fatalf("%s: check: %v", d.id, err)
	}
	body := readAll(resp.Body)
	switch resp.StatusCode {
	case http.StatusNoContent:
		return false
	case http.StatusOK:
		var o otaproto.Offer
		if err := json.Unmarshal(body, &o); err != nil || o.SHA256 != d.sha {
			d.t.Fatalf("%s: offer %s: %v", d.id, body, err)
		}
		return true
	}
	d.t.Fatalf("%s: check: %s %s", d.id, resp.Status, body)
	return false
}

// report posts one status report; it returns the error or the status.
func (d *otaDevice) report(state string) (int, error) {
	rep := otaproto.Report{State: state, Rollout: d.rollout, SHA256: d.sha, Version: "2.0.0+0", SecurityCounter: 2}
	b, _ := json.Marshal(rep)
	resp, err := d.client().Post("https://"+d.n.API+otaproto.PathStatus, "application/json", bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	readAll(resp.Body)
	return resp.StatusCode, nil
}

// finish takes the offer and reports the boot, unless a report made
// before a kill was committed already.
func (d *otaDevice) finish() {
	d.t.Helper()
	switch d.state(d.id) {
	case store.DeviceBooted:
		return
	case store.DevicePending:
		if !d.offered() {
			d.t.Fatalf("device %s of an open stage was offered nothing", d.id)
		}
	}
	if code, err := d.report(otaproto.StateBooted); err != nil || code != http.StatusNoContent {
		d.t.Fatalf("%s: report booted: %d %v", d.id, code, err)
	}
}

// finishAsync is finish for a request the test kills the server under: it
// checks and reports without failing the test.
func (d *otaDevice) finishAsync() {
	resp, err := d.client().Get("https://" + d.n.API + otaproto.PathCheck + "?version=1.0.0&security_counter=1")
	if err != nil {
		return
	}
	readAll(resp.Body)
	_, _ = d.report(otaproto.StateBooted)
}
