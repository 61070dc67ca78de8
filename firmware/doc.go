// Package firmware builds, parses and verifies the two signed artefacts of
// a Warden firmware release: MCUboot images and release statements. The
// formats are specified in docs/firmware.md, and testdata/firmware holds
// vectors that any implementation (a device's C code included) can run.
//
// An image is exactly what MCUboot's imgtool sign produces and what stock
// MCUboot (Zephyr, nRF Connect SDK, Mynewt) boots: a header, the payload,
// a protected TLV area holding the security counter, and a TLV area holding
// the SHA-256 of everything before it, the hash of the signing key and an
// ECDSA P-256 or Ed25519 signature. Sign creates one, ParseImage checks its
// structure, and Image.Verify checks what the bootloader checks.
//
// A release statement is a small COSE_Sign1 the release manager signs with
// the same key: model, version, security counter, the SHA-256 and size of
// the image file, a sequence number and a validity window. A device
// verifies it and applies its Policy (Statement.Check) before it downloads
// anything, so an attacker who replays an old, validly signed release is
// refused without a byte of firmware sent; after the download,
// Statement.MatchImage ties the file to the statement.
//
// The release key never needs to be on the Warden server: the server only
// holds public keys (KeyID names them), checks uploads with Verify and
// VerifyStatement, and serves the files. Signing happens on the release
// manager's machine, with any crypto.Signer (an HSM or KMS key works).
package firmware
