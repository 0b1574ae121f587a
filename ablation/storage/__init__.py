"""Where records live: local paths or object-storage URIs (store), atomic writes (atomic), local files
(files) and what every record says about the code and machine that wrote it (provenance).
"""
