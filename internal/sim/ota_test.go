package sim

import (
	"bytes"
	"errors"
	"testing"

	"github.com/warden-iot/warden/device"
	"github.com/warden-iot/warden/firmware"
	"github.com/warden-iot/warden/otaproto"
)

// The in-memory store keeps what the agent saves, hands out copies, and
// resumes a download of the same image only.
func TestMemOTAStore(t *testing.T) {
	var m memOTAStore
	st, err := m.Load()
	if err != nil || st.Version != (firmware.Version{}) || st.Pending != nil {
		t.Fatalf("fresh store: %+v %v", st, err)
	}
	want := device.OTAState{Version: firmware.Version{Major: 1}, SecurityCounter: 2, Sequence: 3, Accepted: 4,
		Pending: &device.OTAPending{Rollout: "r1", SHA256: "ab", Sequence: 4}}
	if err := m.Save(want); err != nil {
		t.Fatal(err)
	}
	want.Pending.Rollout = "changed after Save"
	got, _ := m.Load()
	if got.Pending == nil || got.Pending.Rollout != "r1" || got.Accepted != 4 {
		t.Errorf("loaded %+v", got)
	}
	got.Pending.Rollout = "changed after Load"
	if again, _ := m.Load(); again.Pending.Rollout != "r1" {
		t.Error("Load shares the stored pending release")
	}

	dl, _ := m.OpenDownload("aa")
	dl.Write([]byte("hello "))
	dl.Close()
	dl, _ = m.OpenDownload("aa")
	if dl.Size() != 6 {
		t.Errorf("a resumed download holds %d bytes", dl.Size())
	}
	dl.Write([]byte("world"))
	if err := dl.Truncate(5); err != nil {
		t.Fatal(err)
	}
	if err := dl.Truncate(99); err == nil {
		t.Error("truncating beyond the end was accepted")
	}
	b, _ := dl.Bytes()
	if !bytes.Equal(b, []byte("hello")) || dl.Sync() != nil {
		t.Errorf("download %q", b)
	}
	if other, _ := m.OpenDownload("bb"); other.Size() != 0 {
		t.Error("a download of another image resumed the first")
	}
	m.RemoveDownload()
	if dl, _ := m.OpenDownload("bb"); dl.Size() != 0 {
		t.Error("RemoveDownload kept the bytes")
	}
}

// OTA events are counted by state, and failures as errors.
func TestOTAEvents(t *testing.T) {
	s := &Swarm{errs: newErrorLog()}
	for _, st := range []string{device.OTAOffered, otaproto.StateDownloading, otaproto.StateDownloading, otaproto.StateVerified,
		otaproto.StateInstalling, otaproto.StateBooted, device.OTARefused, otaproto.StateFailed, otaproto.StateRolledBack} {
		s.onOTAEvent("d1", device.OTAEvent{State: st, Err: errors.New("why")})
	}
	if got := s.OTA(); got != (OTACounts{Offered: 1, Verified: 1, Booted: 1, Refused: 1, Failed: 1, RolledBack: 1}) {
		t.Errorf("counts %+v", got)
	}
	if counts, _ := s.errs.snapshot(); counts[ErrOTA] != 3 {
		t.Errorf("errors %v", counts)
	}
}
