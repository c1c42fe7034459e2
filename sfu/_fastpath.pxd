# C-level declarations of the fast path, for other Cython modules to cimport.

cdef class RtpInfo:
    cdef public int payload_type
    cdef public int marker
    cdef public unsigned int sequence
    cdef public unsigned int timestamp
    cdef public unsigned int ssrc
    cdef public int csrc_count
    cdef public Py_ssize_t payload_offset
    cdef public Py_ssize_t payload_length
    cdef public object mid
    cdef public object rid
    cdef public object repaired_rid
    cdef public object abs_send_time
    cdef public object audio_level

cdef class ExtIds:
    cdef public int mid
    cdef public int rid
    cdef public int repaired_rid
    cdef public int abs_send_time
    cdef public int audio_level
