package firmware

import "errors"

// The errors of this package. Every error it returns wraps exactly one of
// them (test with errors.Is) and adds what failed; the wrapped text is for
// logs, the sentinel is for decisions.
var (
	// ErrMalformed: bytes that are not a well-formed image, key or release
	// statement (bad magic, impossible sizes, duplicated or wrongly sized
	// TLVs, non-canonical CBOR, unknown statement fields), or arguments that
	// cannot produce one.
	ErrMalformed = errors.New("firmware: malformed")

	// ErrSignature: the signature does not verify under the given key, or
	// there is no signature for that key.
	ErrSignature = errors.New("firmware: invalid signature")

	// ErrKeyMismatch: the image or statement names another key (key hash
	// TLV, COSE kid or algorithm) than the one it is being verified with.
	ErrKeyMismatch = errors.New("firmware: signed for another key")

	// ErrDigest: a hash does not match: the image's SHA-256 TLV against its
	// contents, or a downloaded file against the size and SHA-256 its
	// release statement names.
	ErrDigest = errors.New("firmware: digest mismatch")

	// ErrMismatch: the image is the file the statement names and verifies,
	// but its header version or security counter differs from the
	// statement's. The release is inconsistent; downloading it again will
	// not help.
	ErrMismatch = errors.New("firmware: image and release statement disagree")

	// ErrExpired: the release statement is outside its validity window:
	// expired, or issued too far in the future.
	ErrExpired = errors.New("firmware: release statement expired or not yet valid")

	// ErrRollback: the release's security counter is below the device's.
	ErrRollback = errors.New("firmware: security counter below the device's floor")

	// ErrReplay: the release statement's sequence number is not above the
	// last one the device accepted.
	ErrReplay = errors.New("firmware: release statement is not newer than the last accepted one")

	// ErrModel: the release is for another device model.
	ErrModel = errors.New("firmware: release is for another device model")

	// ErrNotNewer: the release's version is not above the running one (and
	// downgrades are not allowed, or it is the same version).
	ErrNotNewer = errors.New("firmware: release version is not newer than the running one")

	// ErrUnsupportedKey: a key that is neither ECDSA P-256 nor Ed25519.
	ErrUnsupportedKey = errors.New("firmware: unsupported key (want ECDSA P-256 or Ed25519)")
)
