package config

// Example returns the commented example configuration. Every value in it is
// the built-in default, so it documents the defaults and loads to exactly
// Default(); the repository's warden.example.yaml is a verbatim copy (a test
// keeps them identical).
func Example() string { return example }

const example = `# Warden configuration (warden.yaml).
#
# Precedence, lowest to highest: built-in defaults < this file < WARDEN_*
# environment variables < command-line flags. Every value below is the
# built-in default; delete what you do not change. Unknown keys are an error,
# so a typo cannot be silently ignored. See docs/configuration.md for the
# environment variable and flag of every key.
#
# warden serve reads ./warden.yaml when it exists; name another file with
# --config or WARDEN_CONFIG.

# Directory holding all of Warden's state: PKI, registry, broker sessions,
# audit log. Relative paths are taken from the working directory.
data: ./warden-data

# The master key that seals secrets at rest. Empty means <data>/master.key.
# Keeping it outside the data directory (a mounted secret) means a copy of
# the data directory alone does not expose sealed secrets.
master_key_file: ""

# Extra DNS names or IP addresses for the server certificate, used when
# "warden init" (or the first run) issues it. Devices must reach the server by
# one of these names. Example:
#   hostnames: [mqtt.example.com, 192.0.2.10]
hostnames: []

log:
  level: info     # debug, info, warn or error
  format: text    # text or json

# Device listener: MQTT over mutual TLS. Required; it cannot be turned off.
mqtts:
  addr: ":8883"
  # strict: TLS 1.3 only. compat: also TLS 1.2 with ECDHE and AEAD suites,
  # for device TLS stacks without TLS 1.3.
  tls_profile: strict

# MQTT over WebSocket with mutual TLS, for devices behind proxies that only
# pass HTTPS. Empty addr turns it off; e.g. ":443".
wss:
  addr: ""
  tls_profile: strict
  path: /mqtt

# Plain MQTT (no TLS) for envelope devices only: devices that cannot run TLS
# authenticate with a single-use password and must seal every publish
# (docs/envelope.md). Off unless set; the server warns when it is on.
# Example: ":1883".
mqtt:
  addr: ""

# HTTPS listener: devices check for and download firmware here (mutual TLS;
# docs/firmware.md), and operators use the API. Empty addr turns it off.
api:
  addr: ":8443"
  tls_profile: strict

# HTTP listener: API, health and metrics. Empty addr turns it off.
http:
  addr: 127.0.0.1:8080
  # Go profiles (CPU, heap, goroutines) at /debug/pprof/, for finding where
  # time and memory go: go tool pprof http://127.0.0.1:8080/debug/pprof/heap
  # Loopback addresses only.
  pprof: false

tls:
  # Offer the hybrid post-quantum key exchange X25519MLKEM768 first. It costs
  # about 30% more CPU per handshake; it protects recorded device traffic
  # against future quantum attacks. false: X25519 and P-256 only.
  hybrid_pq: true

# Durations take a unit: 10s, 5m, 1h30m, 7d, 1d12h (d is 24 hours). Sizes
# are bytes or take a binary unit: 65536, 64KiB, 1MiB.
limits:
  connect_timeout: 10s       # TLS handshake + MQTT CONNECT deadline (1s..5m)
  max_packet_size: 64KiB     # largest MQTT packet (1KiB..256MiB)
  client_send_queue: 64      # outbound packets queued per client (8..65536)
  max_inflight: 64           # QoS 1/2 messages stored per session (1..65535)
  # Back-end services read whole fleets (fleet/#): deeper queues, so that a
  # burst is queued rather than dropped. There are few services.
  service_send_queue: 8192   # outbound packets queued per service (8..65536)
  service_max_inflight: 8192 # QoS 1/2 messages stored per service session (1..65535)
  # TLS handshakes computing at once; the others wait without holding CPU,
  # so that connected devices keep their latency in a reconnect storm.
  handshake_concurrency: 0   # 0 = one per CPU (0..4096)
  max_keep_alive: 5m         # keep alive for clients asking for none or more (1s..18h12m15s)
  publish_rate: 100          # messages per second per device (> 0)
  publish_burst: 200         # per-device burst (1..1000000)
  connection_rate: 500       # new connections per second per listener (> 0)
  connection_burst: 1000     # per-listener burst (1..1000000)
  # One source address (IPv4, or an IPv6 /64) may open at most this many
  # connections a second on a listener, bursts of twice that, so that one
  # host cannot spend the listener's whole rate. Raise it for a fleet
  # behind one NAT address; 0 turns it off.
  connection_rate_per_source: 125
  # A device connecting more than flap_max_connects times within flap_window
  # is refused for flap_ban.
  flap_max_connects: 15      # 1..1000000
  flap_window: 1m            # 1s..24h
  flap_ban: 5m               # 1s..168h
  max_session_expiry: 168h   # longest a disconnected session is kept (1s..87600h)

ota:
  # Base URL devices download images from; empty: https://<first hostname>:<api port>.
  public_url: ""
  max_image_size: 64MiB   # largest firmware image accepted (1KiB..1GiB)

devices:
  # Validity of certificates Warden issues. 0 means the default, 3650d
  # (10 years): devices are often out of reach for renewal, and revocation,
  # not expiry, is what cuts a device off. For short-lived device
  # certificates set e.g. 30d: the device SDK (device.Config.AutoRenew)
  # renews at two thirds of the lifetime, and a device that stays offline
  # past expiry must enroll again.
  cert_lifetime: 0s            # 0 (10 years) or 1h..36500d; e.g. 30d
  service_cert_lifetime: 0s    # 0 (10 years) or 1h..36500d

# The anomaly monitor (docs/monitoring.md): detectors over what devices do.
# Each finding becomes an alert (stored, "warden alerts", GET /v1/alerts, a
# metric, the webhook). A detector's response is "alert" (only), "disconnect"
# (cut the device's connection) or "quarantine" (the device may only use its
# OTA and certificate topics until "warden device release ID").
monitor:
  enabled: true
  cooldown: 1h            # repeats within it count into the same alert (1m..7d)
  queue_size: 4096        # findings waiting to be stored; beyond: dropped, counted (16..1000000)
  max_devices: 200000     # devices tracked (100..10000000)
  max_sources: 20000      # addresses, claimed IDs and services tracked (100..10000000)
  forget_after: 7d        # drop the state of a device unseen this long (1h..365d)
  check_interval: 30s     # silence checks, forgetting, releases from the CLI (1s..1h)
  retention: 90d          # delete alerts last seen longer ago; 0 keeps them (0 or 1d..3650d)
  webhook:
    # Alerts are POSTed as JSON with a Warden-Signature header (HMAC-SHA256).
    url: ""               # http(s)://...; empty turns the webhook off
    secret_file: ""       # file holding the signing secret (>= 16 bytes, mode 0600); required with url
    timeout: 10s          # per attempt (1s..5m)
    max_attempts: 5       # with exponential backoff (1..20)
  # Refused connections per claimed device ID, and per source address. The
  # ID and address are the peer's claim, so these only alert.
  auth_failures:
    enabled: true
    threshold: 10         # failures within window (1..1000000)
    window: 5m            # 1s..7d
  auth_failures_source:
    enabled: true
    threshold: 50         # many devices may share one address behind NAT
    window: 5m
  # Sealed messages of a device that did not authenticate, and replays.
  envelope_tag_failures:
    enabled: true
    threshold: 3
    window: 10m
    response: alert
  envelope_replays:
    enabled: true
    threshold: 5          # a QoS 1 resend after a lost PUBACK is one
    window: 10m
    response: alert
  # Publishes and subscriptions outside the device's rights.
  acl_denials:
    enabled: true
    threshold: 10
    window: 10m
    response: alert
  # A device publishing far above its own baseline: publishes are counted
  # per interval; the baseline is a weighted average over the intervals in
  # which it published. After warmup such intervals, more than factor times
  # the baseline and more than floor publishes in one interval is a finding.
  publish_rate:
    enabled: true
    interval: 1m          # 1s..1h
    factor: 10            # > 1
    floor: 60             # publishes per interval (1..1000000000)
    warmup: 30            # intervals learned before judging (1..1000000)
    response: alert
  # A payload far larger than the device's own: after warmup publishes, one
  # larger than factor times its weighted average size and than floor.
  payload_size:
    enabled: true
    factor: 8
    floor: 4KiB           # 1B..256MiB
    warmup: 50            # publishes
    response: alert
  # A device connecting again and again.
  connect_flapping:
    enabled: true
    threshold: 10         # connects within window
    window: 10m
    response: alert
  # One identity connecting alternately from two hosts: a cloned key. One
  # change of address is roaming; switches changes within window are not.
  cloned_identity:
    enabled: true
    switches: 2           # 1..1000
    window: 10m
    response: alert
  # A device not heard from (connect or publish) for longer than its
  # heartbeat, among the devices seen since the server started. Per model
  # (as reported with the firmware), e.g.:
  #   models: [{model: sensor-v2, heartbeat: 6h}, {model: actuator, heartbeat: 0s}]
  # where 0s turns the check off for that model.
  silence:
    enabled: true
    heartbeat: 1h         # 1m..365d
    models: []
  # Certificates that expire within window, one alert per certificate. A
  # certificate is reported only once less than a quarter of its life is
  # left too (devices renew with a third left), so short-lived ones are not.
  cert_expiry:
    enabled: true
    window: 30d           # 1h..3650d
    interval: 6h          # scan period (1m..7d)
  # Firmware outside the versions allowed for the device's model.
  firmware:
    enabled: true
    response: alert
`
