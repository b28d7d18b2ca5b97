"""Services: the long-lived processes the project starts on this machine and lets outlive a
run. It owns the embedded Redis (`embedded_redis`, one per storage root, with its idle
watcher and holders in `redis_idle`), the redis-server shards a RedisClusterManager starts
(`redis_cluster`), and the storage root's local Ray that stays warm between runs
(`ray_head`) with its pool of warm ranks (`ray_pool`), which uses only the ones that run
the driver's tinyexp code (`code_fingerprint`). What they share (state files under
the storage root, file locks, pid probes, detached spawns, the idle-stop setting) is in
`lifecycle`; the redis-server process itself (its executable, config, readiness) is in
`redis_process`. The Redis client factory every Redis user goes through (URL validation and
redaction, clients with timeouts, the error classifier) is `redis_client`; TinyExp 0.0.1's
sample-cache shards around a run (`RedisCfgMixin`) are `redis_cache`. Ray sessions are
`launchers.ray`.
"""
