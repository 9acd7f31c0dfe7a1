"""A grown audit log: production's shape and size before anything is measured.

A fresh `audit_events` has small indexes that sit in `shared_buffers`; a production log
does not. `traffic` makes synthetic events shaped like production's, `grow` loads them
by COPY (and the link table's rows), `tables` says which link table there is and how much
the log holds. `python -m bench.studies.auditgrow` grows a scratch database's log alone.
"""
