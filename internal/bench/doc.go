// Package bench is the infrastructure of `warden bench`: it starts the
// servers being compared as child processes on loopback ports (Warden with
// a generated configuration, Mosquitto 2 configured as the seed documents
// do for device certificates, and a bare Go crypto/tls server as the
// yardstick for handshakes), provisions and reuses fleets of device
// credentials, measures processes from /proc (memory, CPU time, open files)
// and Warden's Go heap from its /metrics, runs the bare-TLS handshake
// baseline, and writes results as an aligned table and as JSON with ratios
// against a yardstick measured in the same run.
//
// The scenarios (idle, storm, baseline, throughput, sealed, paced,
// compare) load the servers with a bare MQTT 5 client (Client), stamping
// payloads and recording latency as internal/sim does; sealed is the
// throughput load with envelope devices on Warden's plain listener, each
// payload sealed as the device SDK seals it.
//
// Every server runs in its own process so that its CPU time and memory are
// its own: CPU per handshake or per message is the server's user + system
// time from /proc/PID/stat over the count. The client side (the simulated
// devices) shares the machine's cores with the server, which is why ratios
// against a yardstick run the same way matter more than absolute figures.
package bench
