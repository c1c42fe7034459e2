# C-level declarations of the fast path, for other Cython modules to cimport.

cdef class RtpInfo:
    cdef readonly int payload_type
    cdef readonly int marker
    cdef readonly unsigned int sequence
    cdef readonly unsigned int timestamp
    cdef readonly unsigned int ssrc
    cdef readonly int csrc_count
    cdef readonly Py_ssize_t payload_offset
    cdef readonly Py_ssize_t payload_length
    cdef readonly object mid
    cdef readonly object rid
    cdef readonly object repaired_rid
    cdef readonly object abs_send_time
    cdef readonly object audio_level

cdef class ExtIds:
    cdef readonly int mid
    cdef readonly int rid
    cdef readonly int repaired_rid
    cdef readonly int abs_send_time
    cdef readonly int audio_level
