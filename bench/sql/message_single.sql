-- One message per call: send one, read one (60 s lease), delete the one
-- read. Each statement is its own transaction. A read that finds nothing
-- (another client took the message) skips the delete.
-- Variables: queue.
SELECT cb_send(queue => :queue, body => '{}');
SELECT id AS read_id FROM cb_read(queue => :queue, quantity => 1, hide_for => 60000)
UNION ALL SELECT 0 ORDER BY 1 DESC LIMIT 1 \gset
\if :read_id > 0
SELECT cb_delete(queue => :queue, id => :read_id);
\endif
