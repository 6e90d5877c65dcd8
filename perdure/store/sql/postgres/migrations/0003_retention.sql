-- perdure schema 3: retention. Old runs are found by their end, and a blob is kept while any
-- row still references it.

CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX runs_args_blob ON runs (args_blob) WHERE args_blob IS NOT NULL;
CREATE INDEX runs_result_blob ON runs (result_blob) WHERE result_blob IS NOT NULL;
CREATE INDEX journal_blob ON journal (blob_key) WHERE blob_key IS NOT NULL;
