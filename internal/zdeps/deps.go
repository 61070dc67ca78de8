package zdeps
import (
 _ "github.com/mochi-mqtt/server/v2"
 _ "github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
 _ "github.com/eclipse/paho.golang/autopaho"
 _ "modernc.org/sqlite"
 _ "github.com/pressly/goose/v3"
 _ "github.com/spf13/cobra"
 _ "github.com/knadh/koanf/v2"
 _ "github.com/knadh/koanf/providers/file"
 _ "github.com/knadh/koanf/parsers/yaml"
 _ "github.com/knadh/koanf/providers/env/v2"
 _ "github.com/knadh/koanf/providers/posflag"
 _ "github.com/prometheus/client_golang/prometheus"
 _ "github.com/prometheus/client_golang/prometheus/promhttp"
 _ "github.com/eclipse/paho.mqtt.golang"
 _ "github.com/schollz/progressbar/v3"
 _ "golang.org/x/time/rate"
 _ "golang.org/x/crypto/scrypt"
 _ "github.com/gorilla/websocket"
)

