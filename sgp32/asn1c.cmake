# cmake -DASN1C=... -DFLAGS=... -DMODULES=... -DOUT=dir -P asn1c.cmake:
# regenerates the SGP.32 codec into OUT from scratch (sgp32/CMakeLists.txt).
file(REMOVE_RECURSE ${OUT})
file(MAKE_DIRECTORY ${OUT})
execute_process(COMMAND ${ASN1C} ${FLAGS} ${MODULES} WORKING_DIRECTORY ${OUT}
                RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "asn1c failed: ${err}")
endif()
file(REMOVE ${OUT}/converter-sample.c ${OUT}/Makefile.am.sample)
# asn1c 0.9.28 bug: the first use of a constrained alias type (Octet16 ::=
# OCTET STRING (SIZE(16)), TransactionId, Iccid, ...) runs its
# *_inherit_TYPE_descriptor(), which overwrites the type's own constraint
# check with the base type's, so from then on asn_check_constraints()
# accepts an eidValue of 15 bytes (found by tests/fuzz esipa_poll). The
# alias keeps its own checker: drop that one assignment from every
# inherit function (the constraint functions' own forwarding is kept).
file(GLOB generated ${OUT}/*.c)
foreach(f ${generated})
  file(READ ${f} text)
  string(REGEX REPLACE
    "(\ttd->print_struct[ ]+= asn_DEF_[A-Za-z0-9_]+\\.print_struct;\n)\ttd->check_constraints[ ]+= asn_DEF_[A-Za-z0-9_]+\\.check_constraints;\n"
    "\\1" patched "${text}")
  if(NOT patched STREQUAL text)
    file(WRITE ${f} "${patched}")
  endif()
endforeach()
