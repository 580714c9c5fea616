package queue

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

// Every script is lib.lua (shared helpers) followed by its body, and is
// run with Script.Run: EVALSHA, falling back to EVAL after a restarted Redis
// forgot the script. See each file's header for its KEYS, ARGV and reply.
var (
	//go:embed scripts/lib.lua
	luaLib string
	//go:embed scripts/fetch.lua
	luaFetch string
	//go:embed scripts/tick.lua
	luaTick string
	//go:embed scripts/reap.lua
	luaReap string
	//go:embed scripts/ack.lua
	luaAck string
	//go:embed scripts/release.lua
	luaRelease string
	//go:embed scripts/requeue.lua
	luaRequeue string
	//go:embed scripts/purge.lua
	luaPurge string
	//go:embed scripts/reconcile.lua
	luaReconcile string
	//go:embed scripts/schedule.lua
	luaSchedule string
	//go:embed scripts/sweep.lua
	luaSweep string

	fetchScript     = redis.NewScript(luaLib + luaFetch)
	tickScript      = redis.NewScript(luaLib + luaTick)
	reapScript      = redis.NewScript(luaLib + luaReap)
	ackScript       = redis.NewScript(luaLib + luaAck)
	releaseScript   = redis.NewScript(luaLib + luaRelease)
	requeueScript   = redis.NewScript(luaLib + luaRequeue)
	purgeScript     = redis.NewScript(luaLib + luaPurge)
	reconcileScript = redis.NewScript(luaLib + luaReconcile)
	scheduleScript  = redis.NewScript(luaLib + luaSchedule)
	sweepScript     = redis.NewScript(luaLib + luaSweep)
)
