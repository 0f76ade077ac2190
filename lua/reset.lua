-- reset: forgets the counters KEYS name, as if they were never hit (the admin API's
-- DELETE /admin/clients/{name}). KEYS share one hash tag, so on a Cluster they are one slot.
-- Returns how many of them existed.
return redis.call('DEL', unpack(KEYS))
