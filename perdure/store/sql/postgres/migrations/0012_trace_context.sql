-- perdure schema 12: the W3C traceparent of the code that triggered a run (NULL: not traced),
-- so that every execution of the run, on any worker, is a span of that one trace.

ALTER TABLE runs ADD COLUMN trace_context text;
