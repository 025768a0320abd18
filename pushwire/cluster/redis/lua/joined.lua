-- A node subscribed to a bus topic (bus and state apart; see publisher.py, ReceiverCounts):
-- ARGV[3] the topic's join mark key (Keys.joined), ARGV[4] a value never used before.
-- Publishes that reuse a receiver count taken before this mark moved are held back (STALE).
redis.call('SET', ARGV[3], ARGV[4], 'PX', 3600000)
return 1
