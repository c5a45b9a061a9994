-- 100 messages per call: send 100 in one call, read up to 100 (60 s
-- lease), delete the ids read in one call. Each statement is its own
-- transaction.
-- Variables: queue.
SELECT count(*) FROM cb_send(queue => :queue, bodies => array_fill('{}'::jsonb, ARRAY[100]));
SELECT coalesce(array_agg(id), '{}') AS read_ids
FROM cb_read(queue => :queue, quantity => 100, hide_for => 60000) \gset
SELECT count(*) FROM cb_delete(queue => :queue, ids => :read_ids::bigint[]);
