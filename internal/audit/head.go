package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/warden-iot/warden/internal/fileutil"
)

// Head is the chain head: the seq and hash of the newest entry known to be
// on disk. It lives beside the log (HeadPath) so that removing entries
// from the end of the log, which leaves a valid but shorter chain, is
// detected: the log must reach the head.
//
// A head with Seq 0 is written when a log without entries is first opened
// (its Hash is then the prev the first entry will have): from then on a
// missing head file means it was deleted.
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// String is the head as an anchor, SEQ:HASH, the form `warden audit
// verify --anchor` takes.
func (h Head) String() string { return strconv.FormatUint(h.Seq, 10) + ":" + h.Hash }

// maxHeadSize bounds what ReadHead reads: a real head is under 100 bytes.
const maxHeadSize = 4 << 10

// HeadPath is where the head of the log at logPath is kept.
func HeadPath(logPath string) string { return logPath + ".head" }

// ReadHead reads the head of the log at logPath. The error wraps
// fs.ErrNotExist when there is none (no chained entry was ever committed)
// and ErrMalformedHead when the file is not a head.
func ReadHead(logPath string) (Head, error) {
	f, err := os.Open(HeadPath(logPath))
	if err != nil {
		return Head{}, fmt.Errorf("audit: read the chain head: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxHeadSize+1))
	if err != nil {
		return Head{}, fmt.Errorf("audit: read the chain head %s: %w", f.Name(), err)
	}
	h, err := parseHead(b)
	if err != nil {
		return Head{}, fmt.Errorf("audit: the chain head %s: %w: %v", f.Name(), ErrMalformedHead, err)
	}
	return h, nil
}

// ErrMalformedHead is wrapped by ReadHead's error when the head file exists
// but is not a head: it was edited, or something other than Warden wrote it.
var ErrMalformedHead = errors.New("malformed head")

// ParseAnchor parses SEQ:HASH (what Head.String and `warden audit head`
// print) into the seq and hash an entry must have.
func ParseAnchor(s string) (Head, error) {
	seqText, hash, ok := strings.Cut(strings.TrimSpace(s), ":")
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if !ok || err != nil || seq == 0 || !isHexHash([]byte(hash)) {
		return Head{}, fmt.Errorf("audit: anchor %q: want SEQ:HASH, e.g. 57:<64 lower-case hex digits>, as `warden audit head` prints", s)
	}
	return Head{Seq: seq, Hash: hash}, nil
}

func parseHead(b []byte) (Head, error) {
	if len(b) > maxHeadSize {
		return Head{}, errors.New("too long")
	}
	var h Head
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return Head{}, err
	}
	if dec.More() {
		return Head{}, errors.New("data after the JSON object")
	}
	if !isHexHash([]byte(h.Hash)) {
		return Head{}, errors.New(`want {"seq":N,"hash":"<64 lower-case hex digits>"}`)
	}
	return h, nil
}

// encodeHead is the head file's exact content.
func encodeHead(h Head) []byte {
	b := append([]byte(`{"seq":`), strconv.FormatUint(h.Seq, 10)...)
	b = append(b, `,"hash":"`...)
	b = append(b, h.Hash...)
	return append(b, "\"}\n"...)
}

// stageHead writes h to a synced temporary file beside the head, so that
// publishing it (a rename) is all that needs the lock.
func stageHead(logPath string, h Head) (string, error) {
	dir := filepath.Dir(logPath)
	f, err := os.CreateTemp(dir, "."+filepath.Base(HeadPath(logPath))+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("audit: write the chain head: %w", err)
	}
	name := f.Name()
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(encodeHead(h))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("audit: write the chain head %s: %w", name, err)
	}
	return name, nil
}

// publishHead renames a staged head into place unless the current head is
// already at or past h (another process committed further meanwhile): the
// head only moves forward. The caller holds the log lock.
func publishHead(logPath, staged string, h Head) (bool, error) {
	// A missing or malformed head is replaced: keeping a malformed one
	// would end truncation detection for good (the writer has logged it).
	if cur, err := ReadHead(logPath); err == nil && cur.Seq >= h.Seq {
		os.Remove(staged)
		return false, nil
	}
	if err := os.Rename(staged, HeadPath(logPath)); err != nil {
		os.Remove(staged)
		return false, fmt.Errorf("audit: update the chain head: %w", err)
	}
	return true, nil
}

// syncHeadDir makes a published head durable; it runs without the lock.
func syncHeadDir(logPath string) error {
	return fileutil.SyncDir(filepath.Dir(logPath))
}
