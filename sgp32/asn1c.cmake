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
# asn1c 0.9.28's UTF8String__process computes dst + dstlen with dst NULL
# when it is only asked for the length (UBSan, clang: "applying zero offset
# to null pointer"; found by tests/fuzz esipa_result and esipa_download).
file(READ ${OUT}/UTF8String.c text)
string(REPLACE "uint32_t *dstend = dst + dstlen;" "uint32_t *dstend = dst ? dst + dstlen : dst;"
  patched "${text}")
if(patched STREQUAL text)
  message(FATAL_ERROR "asn1c.cmake: UTF8String.c no longer has the line to patch")
endif()
file(WRITE ${OUT}/UTF8String.c "${patched}")
# We decode DER only, and asn1c's BER decoder loops forever on some
# indefinite lengths nested in a value sent with a primitive tag (it does
# not check the constructed bit; found by tests/fuzz esipa_result): its
# length reader refuses the indefinite form outright.
file(READ ${OUT}/ber_tlv_length.c text)
string(REPLACE "if(_is_constructed && oct == 0x80) {\n\t\t\t*len_r = -1;\t/* Indefinite length */\n\t\t\treturn 1;\n\t\t}"
  "if(oct == 0x80) {\n\t\t\treturn -1;\t/* DER only: no indefinite length */\n\t\t}"
  patched "${text}")
if(patched STREQUAL text)
  message(FATAL_ERROR "asn1c.cmake: ber_tlv_length.c no longer has the lines to patch")
endif()
file(WRITE ${OUT}/ber_tlv_length.c "${patched}")
