// Package otaproto is the wire protocol between Warden's OTA service and a
// device's update agent, over HTTPS and over MQTT (docs/firmware.md,
// "Delivery"). It holds only message shapes and their checks; the formats
// that carry trust (images and release statements) are in package firmware,
// and nothing here is trusted by a device until the statement it carries
// verifies against the device's pinned release key.
package otaproto

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// MQTT channels under private/<id>/ota/.
const (
	TopicNotify = "notify" // Warden -> device: an Offer
	TopicGet    = "get"    // device -> Warden: a BlockRequest
	TopicBlock  = "block"  // Warden -> device: a block (EncodeBlock)
	TopicStatus = "status" // device -> Warden: a Report
)

// Topic returns private/<id>/ota/<channel>.
func Topic(deviceID, channel string) string {
	return "private/" + deviceID + "/ota/" + channel
}

// Block sizes for MQTT delivery. A device picks its size per request; the
// ceiling keeps a block well under the broker's default 64 KiB packet limit.
const (
	DefaultBlockSize = 4096
	MaxBlockSize     = 16384
	BlockHeaderSize  = 8
)

// HTTP paths on Warden's HTTPS listener.
const (
	PathCheck  = "/ota/v1/check"
	PathImages = "/ota/v1/images/" // + lowercase hex SHA-256
	PathStatus = "/ota/v1/status"
)

// Offer tells a device that an image is waiting for it. Only Statement is
// trusted (after verification); the other fields say where to fetch.
type Offer struct {
	Rollout   string `json:"rollout"`
	Statement []byte `json:"statement"` // COSE_Sign1 release statement (base64 in JSON)
	SHA256    string `json:"sha256"`    // of the image file, as in the statement
	Size      int64  `json:"size"`
	Version   string `json:"version"`
	URL       string `json:"url,omitempty"`        // HTTPS download (Range supported)
	BlockSize int    `json:"block_size,omitempty"` // suggested MQTT block size
}

// Report states a device may report.
const (
	StateCurrent     = "current"     // what the device runs now (sent at start; also asks for an offer)
	StateDownloading = "downloading" // Offset bytes received
	StateVerified    = "verified"    // hash and signature checked
	StateInstalling  = "installing"  // handed to the installer
	StateBooted      = "booted"      // running the new image
	StateFailed      = "failed"      // Reason says why
	StateRolledBack  = "rolled-back" // the bootloader reverted
)

// MaxReasonLength bounds the free-text reason a device may send.
const MaxReasonLength = 256

// Report is a device's status message.
type Report struct {
	State           string `json:"state"`
	Rollout         string `json:"rollout,omitempty"`
	SHA256          string `json:"sha256,omitempty"`  // the offered image this report is about
	Version         string `json:"version,omitempty"` // running version (current, booted, rolled-back)
	SecurityCounter uint32 `json:"security_counter"`  // running image's security counter
	Sequence        uint64 `json:"sequence,omitempty"`
	Offset          int64  `json:"offset,omitempty"`
	Reason          string `json:"reason,omitempty"`
}

// Validate checks the shape of a report, not its truth.
func (r Report) Validate() error {
	switch r.State {
	case StateCurrent, StateBooted, StateRolledBack:
		if r.Version == "" {
			return fmt.Errorf("ota report %q: version is required", r.State)
		}
	case StateDownloading, StateVerified, StateInstalling, StateFailed:
	default:
		return fmt.Errorf("ota report: unknown state %q", r.State)
	}
	if r.State != StateCurrent {
		if r.Rollout == "" || !ValidSHA256(r.SHA256) {
			return fmt.Errorf("ota report %q: rollout and sha256 are required", r.State)
		}
	}
	if r.SHA256 != "" && !ValidSHA256(r.SHA256) {
		return errors.New("ota report: sha256 must be 64 lowercase hex digits")
	}
	if len(r.Reason) > MaxReasonLength || len(r.Rollout) > 64 || len(r.Version) > 32 {
		return errors.New("ota report: a field is too long")
	}
	if r.Offset < 0 {
		return errors.New("ota report: negative offset")
	}
	return nil
}

// BlockRequest asks for Length bytes of an image from Offset.
type BlockRequest struct {
	SHA256 string `json:"sha256"`
	Offset int64  `json:"offset"`
	Length int    `json:"length"`
}

// Validate checks the request's shape.
func (b BlockRequest) Validate() error {
	if !ValidSHA256(b.SHA256) {
		return errors.New("ota block request: sha256 must be 64 lowercase hex digits")
	}
	if b.Offset < 0 || b.Offset > 1<<32 {
		return errors.New("ota block request: offset out of range")
	}
	if b.Length <= 0 || b.Length > MaxBlockSize {
		return fmt.Errorf("ota block request: length must be 1..%d", MaxBlockSize)
	}
	return nil
}

// EncodeBlock frames a block: offset (uint32, big-endian), the image's
// total size (uint32, big-endian), then the bytes.
func EncodeBlock(offset, total int64, data []byte) []byte {
	b := make([]byte, BlockHeaderSize+len(data))
	PutBlockHeader(b, offset, total)
	copy(b[BlockHeaderSize:], data)
	return b
}

// PutBlockHeader writes a block frame's header into b[:BlockHeaderSize],
// for a sender that reads the data into b[BlockHeaderSize:] itself.
func PutBlockHeader(b []byte, offset, total int64) {
	binary.BigEndian.PutUint32(b[0:4], uint32(offset))
	binary.BigEndian.PutUint32(b[4:8], uint32(total))
}

// ParseBlock splits a block frame. data aliases b.
func ParseBlock(b []byte) (offset, total int64, data []byte, err error) {
	if len(b) < BlockHeaderSize {
		return 0, 0, nil, errors.New("ota block: shorter than its 8-byte header")
	}
	offset = int64(binary.BigEndian.Uint32(b[0:4]))
	total = int64(binary.BigEndian.Uint32(b[4:8]))
	data = b[BlockHeaderSize:]
	if offset > total || int64(len(data)) > total-offset {
		return 0, 0, nil, fmt.Errorf("ota block: %d bytes at offset %d overrun the image size %d", len(data), offset, total)
	}
	return offset, total, data, nil
}

// ValidSHA256 reports whether s is 64 lowercase hex digits.
func ValidSHA256(s string) bool {
	if len(s) != 64 || strings.ToLower(s) != s {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
