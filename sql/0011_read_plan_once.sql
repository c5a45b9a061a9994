-- Version 11: a read plans its statements once per session.
--
-- PL/pgSQL plans a statement with parameters five times with their values,
-- then keeps a generic plan only when its estimated cost is close to the
-- average of those. cb_read's LIMIT takes the quantity as a parameter, and
-- a generic plan estimates a tenth of the queue's rows for it, so its cost
-- never came close to that of a plan made for one message. Every read then
-- planned its two statements anew: under pgbench on 2 cores (8 clients,
-- one send, read and delete per message) planning took 120 of the read's
-- 280 microseconds and 18 % of the server's CPU time. The read order index
-- and the update by physical address suit every quantity, so the generic
-- plan is the right one. Reads now use it from the first call.
--
-- PostgreSQL decides whether to compile a plan's expressions (JIT) when it
-- makes the plan, from its estimated cost. The generic plan's cost grows
-- with the queue, whatever the quantity read, so past jit_above_cost every
-- read would compile its select again: about 5 ms, against 0.5 ms for the
-- read itself, in a test with the threshold lowered. A read touches a few
-- rows, for which compilation does not pay, so reads run without JIT.

-- migrate:up

ALTER FUNCTION cb_read(text, integer, integer) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION cb_read(text, integer, integer) SET jit = off;

-- migrate:down

ALTER FUNCTION cb_read(text, integer, integer) RESET jit;
ALTER FUNCTION cb_read(text, integer, integer) RESET plan_cache_mode;
